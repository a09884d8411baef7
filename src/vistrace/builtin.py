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
    path = Path(model).expanduser()
    if path.exists() or not _looks_like_hub_id(model):
        return path
    return _cached_snapshot(model)


def _looks_like_hub_id(model: str) -> bool:
    parts = model.split("/")
    return len(parts) == 2 and all(parts) and not model.startswith((".", "~"))


def _cached_snapshot(repo_id: str) -> Path:
    """The local snapshot of hub model `repo_id` in the Hugging Face cache (`HF_HUB_CACHE`, else
    `HF_HOME/hub`, else ~/.cache/huggingface/hub); nothing is downloaded."""
    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import LocalEntryNotFoundError

    cache = os.environ.get("HF_HUB_CACHE") or (
        str(Path(os.environ["HF_HOME"]) / "hub") if os.environ.get("HF_HOME") else None
    )
    try:
        return Path(snapshot_download(repo_id, cache_dir=cache, local_files_only=True))
    except (LocalEntryNotFoundError, FileNotFoundError, OSError):
        raise FileNotFoundError(
            f"{repo_id}: not a directory, and not in the local Hugging Face cache "
            f"({cache or 'the default cache'}); download it first (huggingface-cli download {repo_id})"
        ) from None
