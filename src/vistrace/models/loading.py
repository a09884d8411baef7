"""Load a local checkpoint (HF format, or the original LLaVA format) with its processor and adapter."""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import torch

from vistrace.adapters import Adapter, UnsupportedModelError, get_adapter, supported_model_types

DTYPES: dict[str, torch.dtype] = {
    "float32": torch.float32,
    "bfloat16": torch.bfloat16,
    "float16": torch.float16,
}
AUTO = "auto"
DTYPE_RULE = (
    "auto: the checkpoint's own dtype (config.json `dtype` / `torch_dtype`) on a GPU, float32 on a CPU, "
    "where half precision is slow and inexact"
)
DEVICE_RULE = "auto: the GPU when one is present, else the CPU"


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

    @property
    def context_length(self) -> int | None:
        """The language model's maximum positions (`max_position_embeddings` of its text config), or
        None when the config gives none."""
        config = self.model.config
        text = getattr(config, "text_config", None) or config
        value = getattr(text, "max_position_embeddings", None)
        return int(value) if value else None

    @property
    def eos_ids(self) -> frozenset[int]:
        """Every token id that ends a generation: the generation config's `eos_token_id` (one or
        several), else the tokenizer's; empty when neither names one."""
        eos = self.model.generation_config.eos_token_id
        if eos is None:
            eos = self.processor.tokenizer.eos_token_id
        if eos is None:
            return frozenset()
        return frozenset(int(e) for e in eos) if isinstance(eos, list | tuple) else frozenset({int(eos)})

    def to_model(self, inputs: Mapping[str, Any]) -> dict[str, torch.Tensor]:
        """The tensors of processor output on the model's device, floating-point ones in its dtype
        (pixel values); other entries dropped."""
        device, dtype = self.device, next(self.model.parameters()).dtype
        return {
            key: value.to(device, dtype) if value.is_floating_point() else value.to(device)
            for key, value in inputs.items()
            if isinstance(value, torch.Tensor)
        }

    def generate(self, inputs: Mapping[str, torch.Tensor], **options: Any) -> torch.Tensor:
        """(B, T) the token ids generated after the prompts of `inputs` (on the model's device; a
        batch is left padded), without gradients. `options` go to `model.generate` as they are
        (`max_new_tokens`, `do_sample`, `generation_config` …)."""
        with torch.no_grad():
            sequences = self.model.generate(**inputs, **options)
        return sequences[:, inputs["input_ids"].shape[1] :]


def resolve_dtype(dtype: str | torch.dtype) -> torch.dtype:
    """The torch dtype named `dtype` (float32, bfloat16, float16); ValueError for another name.

    `auto` depends on the checkpoint and the device: :func:`choose_dtype`."""
    if isinstance(dtype, torch.dtype):
        return dtype
    try:
        return DTYPES[dtype]
    except KeyError:
        raise ValueError(f"unknown dtype {dtype!r}; choose auto or one of {', '.join(DTYPES)}") from None


def checkpoint_dtype(directory: str | Path) -> torch.dtype | None:
    """The dtype that the checkpoint's config.json names (`dtype`, else `torch_dtype`, at the top or
    in `text_config`), or None when it names none vistrace knows."""
    try:
        config = json.loads((Path(directory) / "config.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    if not isinstance(config, dict):
        return None
    text = config.get("text_config")
    for scope in (config, text if isinstance(text, dict) else {}):
        for key in ("dtype", "torch_dtype"):
            name = str(scope.get(key, "")).removeprefix("torch.")
            if name in DTYPES:
                return DTYPES[name]
    return None


def resolve_device(device: str | None, device_map: str | dict[str, Any] | None = None) -> str | None:
    """`device` with `auto` resolved: `cuda` when a GPU is present, else None (the CPU); with a
    `device_map`, `auto` means None (the map places the model)."""
    if device != AUTO:
        return device
    if device_map is not None:
        return None
    return "cuda" if torch.cuda.is_available() else None


def _on_accelerator(device: str | None, device_map: str | dict[str, Any] | None) -> bool:
    """Whether the weights will live on a GPU (or another accelerator), not on the CPU."""
    if device is not None:
        try:
            return torch.device(device).type != "cpu"
        except RuntimeError:
            raise ValueError(f"device {device!r}: not a torch device (cpu, cuda, cuda:1 …)") from None
    if device_map is None or not torch.cuda.is_available():
        return False
    if isinstance(device_map, str):
        return device_map not in ("cpu", "disk")
    return any(str(place) not in ("cpu", "disk") for place in device_map.values())


def choose_dtype(
    dtype: str | torch.dtype,
    directory: str | Path,
    device: str | None = None,
    device_map: str | dict[str, Any] | None = None,
) -> torch.dtype:
    """`dtype` as a torch dtype; `auto`: the checkpoint's own dtype on a GPU (float32 when it names
    none), float32 on the CPU, where half precision is slow and inexact. `device` is resolved
    (:func:`resolve_device`)."""
    if dtype != AUTO:
        return resolve_dtype(dtype)
    if not _on_accelerator(device, device_map):
        return torch.float32
    return checkpoint_dtype(directory) or torch.float32


def remote_code_problem(directory: Path) -> str | None:
    """Why the checkpoint in `directory` is not loaded when its config names code of its own
    (`auto_map`) for a model type transformers does not know: vistrace never runs a checkpoint's own
    code (`trust_remote_code`). The family's adapter words the line when it knows the model type
    (InternVL's points to the `-hf` conversion); None when transformers reads the checkpoint."""
    from transformers.models.auto.configuration_auto import CONFIG_MAPPING_NAMES

    try:
        raw = json.loads((directory / "config.json").read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError, UnicodeDecodeError):
        return None  # transformers' own reader says what is wrong
    if not isinstance(raw, dict) or not raw.get("auto_map"):
        return None
    model_type = str(raw.get("model_type", ""))
    if model_type in CONFIG_MAPPING_NAMES:
        return None
    if model_type in supported_model_types():
        problem = get_adapter(model_type).structure_error(SimpleNamespace(**raw))
        if problem is not None:
            return f"{directory}: {problem}"
    return (
        f"{directory}: model type {model_type!r} needs the checkpoint's own code (trust_remote_code), "
        "which vistrace does not run; use a version of the checkpoint that transformers reads natively"
    )


def load(
    path: str | Path,
    *,
    dtype: str | torch.dtype = AUTO,
    device: str | None = None,
    device_map: str | dict[str, Any] | None = None,
    vision_tower: str | Path | None = None,
) -> LoadedModel:
    """Load the checkpoint directory `path`.

    HF checkpoints load through `AutoModelForImageTextToText` / `AutoProcessor`; checkpoints in the
    original LLaVA format (`LlavaLlamaForCausalLM` with `mm_projector`) are converted on the fly,
    the CLIP tower coming from `vision_tower` or the config. `dtype`: float32, bfloat16, float16 or
    `auto` (:func:`choose_dtype`: the checkpoint's dtype on a GPU, float32 on the CPU). `device`:
    None (the CPU), `auto` (the GPU when one is present), or a torch device. `device_map="auto"`
    shards a model too big for one device. The family's adapter loads the processor and adjusts the
    model (for Mllama, the reference intermediate vision features are restored); a model type
    without an adapter, or with a structure its adapter does not know, is refused before the
    weights are read.
    """
    from vistrace.compat import auto_classes
    from vistrace.models.llava_original import is_original_llava, load_original_llava

    directory = Path(path)
    if not (directory / "config.json").is_file():
        raise FileNotFoundError(f"{directory}: not a checkpoint directory (no config.json)")
    if device is not None and device != AUTO and device_map is not None:
        raise ValueError("pass either device or device_map, not both")
    device = resolve_device(device, device_map)
    torch_dtype = choose_dtype(dtype, directory, device, device_map)
    model: Any
    if is_original_llava(directory):
        model, processor = load_original_llava(
            directory, vision_tower=vision_tower, dtype=torch_dtype, device=device, device_map=device_map
        )
        adapter = get_adapter(model)
    else:
        from transformers import AutoConfig

        problem = remote_code_problem(directory)
        if problem is not None:
            raise UnsupportedModelError(problem)
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
