"""Shared fixtures: tiny checkpoints written once per test session, loaded through `vistrace.load`."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from PIL import Image, ImageDraw

from vistrace.models.loading import LoadedModel, load
from vistrace.models.tiny import FAMILIES, write_tiny

torch.set_num_threads(1)


@pytest.fixture(scope="session")
def tiny_dirs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("tiny")
    return {family: write_tiny(family, root / family) for family in FAMILIES}


@pytest.fixture(scope="session")
def tiny_models(tiny_dirs: dict[str, Path]) -> dict[str, LoadedModel]:
    return {family: load(path) for family, path in tiny_dirs.items()}


def scene_image(width: int = 48, height: int = 32) -> Image.Image:
    """A small non-square test image with a red block at the top-left and a blue one bottom-right."""
    image = Image.new("RGB", (width, height), (230, 230, 230))
    draw = ImageDraw.Draw(image)
    draw.rectangle([2, 2, width // 3, height // 3], fill=(220, 20, 20))
    draw.rectangle([width // 2, height // 2, width - 3, height - 3], fill=(20, 20, 220))
    return image


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Tests marked `gpu` need CUDA: on a machine without it they are skipped, with the reason."""
    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs a CUDA GPU (torch.cuda.is_available() is False)")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)
