"""The weights of an original-format LLaVA checkpoint as ``LlavaForConditionalGeneration`` holds them:
key renames (listed in `vistrace.models.llava_original`), shards read without pickle, the CLIP
tower's weights, mean rows for the added ``<image>`` token, and a strict key and shape check."""

from __future__ import annotations

import contextlib
import json
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any, cast

import torch
from safetensors.torch import load_file
from transformers import CLIPVisionModel, LlavaConfig, LlavaForConditionalGeneration
from transformers.utils import logging as hf_logging

_TEXT_PREFIXES = ("model.embed_tokens.", "model.layers.", "model.norm.")
_PROJECTOR_RENAMES = {
    "model.mm_projector.0.": "model.multi_modal_projector.linear_1.",
    "model.mm_projector.2.": "model.multi_modal_projector.linear_2.",
}
_VISION_PREFIXES = ("model.vision_tower.vision_tower.vision_model.", "model.vision_tower.vision_tower.")


def convert_original_llava_state_dict(sd: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Rename original LLaVA weight keys to ``LlavaForConditionalGeneration`` keys (see module doc).

    Keys not recognised are kept unchanged, so that strict loading reports them as unexpected.
    """
    out: dict[str, torch.Tensor] = {}
    for key, tensor in sd.items():
        if key.endswith("rotary_emb.inv_freq"):
            continue
        new_key = key
        if key.startswith(_TEXT_PREFIXES):
            new_key = "model.language_model." + key[len("model.") :]
        else:
            for old, new in _PROJECTOR_RENAMES.items():
                if key.startswith(old):
                    new_key = new + key[len(old) :]
                    break
            else:
                for prefix in _VISION_PREFIXES:
                    if key.startswith(prefix):
                        new_key = "model.vision_tower." + key[len(prefix) :]
                        break
        out[new_key] = tensor
    return out


def _weight_files(path: Path) -> list[Path]:
    for index_name in ("model.safetensors.index.json", "pytorch_model.bin.index.json"):
        index = path / index_name
        if index.is_file():
            weight_map = json.loads(index.read_text(encoding="utf-8"))["weight_map"]
            return [path / name for name in sorted(set(weight_map.values()))]
    for pattern in ("*.safetensors", "pytorch_model*.bin"):
        files = sorted(path.glob(pattern))
        if files:
            return files
    raise FileNotFoundError(f"{path}: no weights found (*.safetensors or pytorch_model*.bin)")


def load_weights(path: Path) -> dict[str, torch.Tensor]:
    """All tensors of the checkpoint; ``.bin`` files go through the weights-only (no pickle) loader."""
    sd: dict[str, torch.Tensor] = {}
    for file in _weight_files(path):
        if file.suffix == ".safetensors":
            sd.update(load_file(str(file), device="cpu"))
        else:
            sd.update(torch.load(file, weights_only=True, map_location="cpu"))
    return sd


@contextlib.contextmanager
def quiet_transformers() -> Iterator[None]:
    previous = hf_logging.get_verbosity()
    hf_logging.set_verbosity_error()
    try:
        yield
    finally:
        hf_logging.set_verbosity(previous)


def load_vision_weights(tower: Path, dtype: torch.dtype) -> dict[str, torch.Tensor]:
    """Vision weights from a ``CLIPVisionModel`` or full ``CLIPModel`` checkpoint, HF Llava key names."""
    with quiet_transformers():
        result = CLIPVisionModel.from_pretrained(tower, dtype=dtype, output_loading_info=True)
    model, info = cast(tuple[CLIPVisionModel, dict[str, Any]], result)
    if info["missing_keys"] or info["mismatched_keys"]:
        raise ValueError(
            f"{tower}: not a CLIP vision checkpoint (missing {sorted(info['missing_keys'])[:5]}, "
            f"mismatched {sorted(info['mismatched_keys'])[:5]})"
        )
    return {"model.vision_tower." + k: v for k, v in model.state_dict().items()}


def append_mean_rows(weight: torch.Tensor, rows: int) -> torch.Tensor:
    """``(V, H)`` → ``(rows, H)``, the new rows being the mean of the old ones."""
    if weight.shape[0] >= rows:
        return weight
    mean = weight.float().mean(dim=0, keepdim=True).to(weight.dtype)
    return torch.cat([weight, mean.expand(rows - weight.shape[0], -1)], dim=0)


def check_keys(config: LlavaConfig, sd: Mapping[str, torch.Tensor], path: Path) -> None:
    """Strict key and shape check of a converted state dict against the model built on ``meta``."""
    with torch.device("meta"):
        expected = {k: tuple(v.shape) for k, v in LlavaForConditionalGeneration(config).state_dict().items()}
    missing = sorted(set(expected) - set(sd))
    if config.tie_word_embeddings:
        missing = [k for k in missing if k != "lm_head.weight"]
    problems = {
        "missing": missing,
        "unexpected": sorted(set(sd) - set(expected)),
        "mismatched": [
            f"{k} {tuple(sd[k].shape)} != {expected[k]}"
            for k in sorted(set(sd) & set(expected))
            if tuple(sd[k].shape) != expected[k]
        ],
    }
    if any(problems.values()):
        details = "; ".join(f"{name}: {keys[:10]}" for name, keys in problems.items() if keys)
        raise ValueError(f"{path}: weights do not match the converted model: {details}")


__all__ = [
    "append_mean_rows",
    "check_keys",
    "convert_original_llava_state_dict",
    "load_vision_weights",
    "load_weights",
    "quiet_transformers",
]
