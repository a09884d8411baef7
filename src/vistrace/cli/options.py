"""Options shared by the commands: the model options of every command that loads a model, paths with
`~` expanded, comma-separated integers."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Annotated, Any

import typer


def expand_path(value: Any) -> Any:
    """A path option's value (one path, a list of them, or None) with `~` expanded."""
    if value is None:
        return None
    if isinstance(value, list | tuple):
        return [Path(item).expanduser() for item in value]
    return Path(value).expanduser()


def _expand_text(value: str | None) -> str | None:
    return None if value is None else os.path.expanduser(value)


ModelOption = Annotated[
    str,
    typer.Option(
        "--model",
        help="Checkpoint directory (HF or original LLaVA format), a hub id in the local Hugging Face "
        "cache, or demo:llava / demo:mllama / tiny:FAMILY for the built-in models.",
    ),
]
DtypeOption = Annotated[
    str,
    typer.Option(
        help="auto: the checkpoint's own dtype (config.json dtype / torch_dtype) on a GPU, float32 on a "
        "CPU, where half precision is slow and inexact; or float32, bfloat16, float16."
    ),
]
DeviceOption = Annotated[
    str | None,
    typer.Option(help="cpu, cuda, cuda:1 … (default: the GPU when one is present, else the CPU)."),
]
DeviceMapOption = Annotated[
    str | None,
    typer.Option("--device-map", help="auto: shard a model too big for one GPU over the GPUs."),
]
VisionTowerOption = Annotated[
    str | None,
    typer.Option(
        "--vision-tower",
        help="CLIP tower directory for an original-format LLaVA checkpoint (default: its mm_vision_tower).",
        callback=_expand_text,
    ),
]
# The model options above are the whole of what every model-loading command (check, eval, trace,
# attend) takes to load its model, each command listing all five and passing them to load_model.
ImagesOption = Annotated[
    Path | None,
    typer.Option(
        help="Folder that relative image paths are resolved against (default: the data file's).",
        callback=expand_path,
    ),
]


def integers(text: str, option: str) -> list[int]:
    """Comma-separated integers; ValueError naming `option` for anything else."""
    values = []
    for part in text.split(","):
        try:
            values.append(int(part.strip()))
        except ValueError:
            raise ValueError(f"{option} {text!r}: {part.strip()!r} is not an integer") from None
    return values


def launched(device: str | None, device_map: str | None) -> Any:
    """This process's :class:`~vistrace.runs.shard.Shard` of a run started by torchrun or
    accelerate launch (rank 0 of 1 otherwise); ValueError for --device-map with several processes."""
    import torch

    from vistrace.runs.shard import launched_shard

    cpu = device == "cpu" or (device_map is None and not torch.cuda.is_available())
    shard = launched_shard(cpu=cpu)
    if shard.world > 1 and device_map is not None:
        raise ValueError(
            f"--device-map with {shard.world} processes would place every process's model over the "
            "same devices; run one process with --device-map, or several without it"
        )
    return shard


def load_model(
    model: str,
    dtype: str = "auto",
    device: str | None = None,
    device_map: str | None = None,
    vision_tower: str | None = None,
    shard: Any = None,
) -> Any:
    """The `LoadedModel` of the model options; without --device or --device-map, the GPU when one
    is present (in a sharded run, the one the launcher gave this process: `shard.device`)."""
    from safetensors import SafetensorError

    from vistrace.models import loading
    from vistrace.models.builtin import resolve_model_dir

    if device is None and device_map is None:
        device = "auto" if shard is None or shard.device is None else shard.device
    try:
        return loading.load(
            resolve_model_dir(model),
            dtype=dtype,
            device=device,
            device_map=device_map,
            vision_tower=vision_tower,
        )
    except SafetensorError as error:
        raise ValueError(f"--model {model}: a weight file is truncated or corrupt ({error})") from error
