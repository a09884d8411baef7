"""Built-in model names: `tiny:FAMILY` (random, written on first use) and `demo:FAMILY` (trained, shipped)."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Literal

DemoFamily = Literal["llava", "mllama"]
DEMO_FAMILIES: tuple[DemoFamily, ...] = ("llava", "mllama")
# The shipped demo checkpoints: data files of the `vistrace.demo` package.
MODELS_DIR = Path(__file__).resolve().parents[1] / "demo" / "models"


def cache_dir() -> Path:
    return Path(os.environ.get("VISTRACE_CACHE", Path.home() / ".cache" / "vistrace"))


def resolve_model_dir(model: str) -> Path:
    """A checkpoint directory for `model`: a path, `tiny:<family>` (any of
    `vistrace.models.tiny.TINY_FAMILIES`) or `demo:llava|mllama`."""
    if model.startswith("tiny:"):
        from vistrace.models.tiny import TINY_FAMILIES, write_tiny

        family = model.split(":", 1)[1]
        if family not in TINY_FAMILIES:
            raise ValueError(f"unknown tiny model {model!r}; choose tiny:{' or tiny:'.join(TINY_FAMILIES)}")
        target = cache_dir() / "tiny" / family
        if not (target / "config.json").exists():
            write_tiny(family, target)
        return target
    if model.startswith("demo:"):
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


class DemoModelMissingError(FileNotFoundError):
    """A demo checkpoint is not where the package expects it."""


def package_model_dir(family: str) -> Path:
    """Where the demo checkpoint of ``family`` lives inside the package (it may not exist yet)."""
    if family not in DEMO_FAMILIES:
        raise ValueError(f"unknown demo family {family!r}; choose one of {', '.join(DEMO_FAMILIES)}")
    return MODELS_DIR / family


def demo_model_dir(family: str) -> Path:
    """The directory of the shipped demo checkpoint of ``family`` (``llava`` or ``mllama``).

    Raises `DemoModelMissingError` when the checkpoint is missing, naming the command that trains it.
    """
    directory = package_model_dir(family)
    if not (directory / "config.json").is_file() or not (directory / "model.safetensors").is_file():
        raise DemoModelMissingError(
            f"the {family} demo model is missing from {directory}; train it with "
            f"`python -m vistrace.demo.train --family {family}`"
        )
    return directory
