"""Load a local checkpoint (HF format, or the original LLaVA format) with its processor and adapter."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from vistrace.adapters import Adapter, get_adapter

DTYPES: dict[str, torch.dtype] = {
    "float32": torch.float32,
    "bfloat16": torch.bfloat16,
    "float16": torch.float16,
}


@dataclass(frozen=True)
class LoadedModel:
    """A model in eval mode, its processor and the adapter of its family."""

    model: Any
    processor: Any
    adapter: Adapter
    path: Path

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device


def resolve_dtype(dtype: str | torch.dtype) -> torch.dtype:
    if isinstance(dtype, torch.dtype):
        return dtype
    try:
        return DTYPES[dtype]
    except KeyError:
        raise ValueError(f"unknown dtype {dtype!r}; choose one of {', '.join(DTYPES)}") from None


def load(
    path: str | Path,
    *,
    dtype: str | torch.dtype = "float32",
    device: str | None = None,
    device_map: str | dict[str, Any] | None = None,
    vision_tower: str | Path | None = None,
) -> LoadedModel:
    """Load the checkpoint directory `path`.

    HF checkpoints load through `AutoModelForImageTextToText` / `AutoProcessor`; checkpoints in the
    original LLaVA format (`LlavaLlamaForCausalLM` with `mm_projector`) are converted on the fly,
    the CLIP tower coming from `vision_tower` or the config. `device_map="auto"` shards a model too
    big for one device. The family's adapter loads the processor and adjusts the model (for Mllama,
    the reference intermediate vision features are restored); a model type without an adapter, or
    with a structure its adapter does not know, is refused before the weights are read.
    """
    from vistrace.compat import auto_classes
    from vistrace.models.llava_original import is_original_llava, load_original_llava

    directory = Path(path)
    if not (directory / "config.json").is_file():
        raise FileNotFoundError(f"{directory}: not a checkpoint directory (no config.json)")
    torch_dtype = resolve_dtype(dtype)
    if device is not None and device_map is not None:
        raise ValueError("pass either device or device_map, not both")
    model: Any
    if is_original_llava(directory):
        model, processor = load_original_llava(
            directory, vision_tower=vision_tower, dtype=torch_dtype, device=device, device_map=device_map
        )
        adapter = get_adapter(model)
    else:
        from transformers import AutoConfig

        # The adapter first: an unsupported family is refused before any weight is read.
        adapter = get_adapter(AutoConfig.from_pretrained(directory))
        auto_model, _ = auto_classes()
        model = auto_model.from_pretrained(directory, dtype=torch_dtype, device_map=device_map)
        if device is not None:
            model.to(device)
        processor = adapter.load_processor(directory)
    model.eval()
    adapter.prepare_model(model)
    return LoadedModel(model=model, processor=processor, adapter=adapter, path=directory)
