"""Built-in model names: `tiny:FAMILY` (random, written on first use) and `demo:FAMILY` (trained, shipped)."""

from __future__ import annotations

import os
from pathlib import Path


def cache_dir() -> Path:
    return Path(os.environ.get("VISTRACE_CACHE", Path.home() / ".cache" / "vistrace"))


def resolve_model_dir(model: str) -> Path:
    """A checkpoint directory for `model`: a path, `tiny:<family>` (any of `vistrace.tiny.FAMILIES`)
    or `demo:llava|mllama`."""
    if model.startswith("tiny:"):
        from vistrace.tiny import FAMILIES, write_tiny

        family = model.split(":", 1)[1]
        if family not in FAMILIES:
            raise ValueError(f"unknown tiny model {model!r}; choose tiny:{' or tiny:'.join(FAMILIES)}")
        target = cache_dir() / "tiny" / family
        if not (target / "config.json").exists():
            write_tiny(family, target)
        return target
    if model.startswith("demo:"):
        from vistrace.demo.models import demo_model_dir

        return demo_model_dir(model.split(":", 1)[1])
    return Path(model)
