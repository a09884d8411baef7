"""LLaVA-OneVision on a tiny offline checkpoint: image-only processor, anyres_max_9 shrinking,
newline features (the seam proofs run in the family-parametrized tests: the family is in
`vistrace.models.tiny.FAMILIES`)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from vistrace.adapters.llava_next import LlavaOnevisionAdapter
from vistrace.models.loading import LoadedModel, load
from vistrace.roles import Role

from ..conftest import scene_image

pytestmark = [pytest.mark.integration, pytest.mark.contract]

QUESTION = "What color is the circle?"


@pytest.fixture(scope="module")
def checkpoint(tiny_dirs: dict[str, Path]) -> Path:
    """The session's tiny llava_onevision checkpoint (tests/conftest.py; one thread, adapters registered)."""
    return tiny_dirs["llava_onevision"]


@pytest.fixture(scope="module")
def loaded(checkpoint: Path) -> LoadedModel:
    return load(checkpoint)


def test_loads_offline_with_the_family_classes(loaded: LoadedModel) -> None:
    assert type(loaded.model).__name__ == "LlavaOnevisionForConditionalGeneration"
    assert type(loaded.processor).__name__ == "LlavaOnevisionProcessor"
    assert type(loaded.processor.image_processor).__name__ == "LlavaOnevisionImageProcessorPil"


@pytest.mark.parametrize("size", [(48, 32), (64, 40), (120, 100), (100, 30)])
def test_image_keys_and_newlines_match_the_model_features(loaded: LoadedModel, size: tuple[int, int]) -> None:
    image = scene_image(*size)
    prepared = loaded.adapter.prepare(loaded.model, loaded.processor, image, QUESTION)
    with torch.no_grad():
        features = loaded.model.model.get_image_features(
            prepared.inputs["pixel_values"], prepared.inputs["image_sizes"]
        ).pooler_output[0]
    assert prepared.image_keys is not None
    assert len(prepared.image_keys) == features.shape[0]
    assert torch.equal(torch.nonzero(prepared.roles == Role.IMAGE).flatten(), prepared.image_keys)
    geometry = loaded.adapter.geometry(loaded.model, loaded.processor, image.size)
    assert geometry.num_features == features.shape[0]
    adapter = loaded.adapter
    assert isinstance(adapter, LlavaOnevisionAdapter)
    is_newline = (features == loaded.model.model.image_newline).all(dim=-1).numpy()
    expected = np.zeros(len(is_newline), dtype=bool)
    expected[adapter.newline_features(loaded.model, loaded.processor, image.size)] = True
    assert np.array_equal(is_newline, expected)
    assert all(geometry.kinds[j] == "padding" for j in np.flatnonzero(expected))
    assert np.isnan(geometry.boxes[expected]).all()


def test_geometry_of_a_shrunk_grid(loaded: LoadedModel) -> None:
    # 120 × 100 → canvas 112 × 112 (4 × 4 tiles, 8 × 8 features); resized to 112 × 94, pasted 9 px
    # down; unpadding keeps grid rows 1 … 6 (6 × 8 = 48 > 36 · 1.1²), shrunk to 5 × 6.
    geometry = loaded.adapter.geometry(loaded.model, loaded.processor, (120, 100))
    assert geometry.num_features == 4 + 5 * (6 + 1)
    assert geometry.boxes[0] == pytest.approx([0.0, 0.0, 60.0, 50.0])
    # Shrunk row 1, column 2: grid rows 1 + 1.2 … 1 + 2.4, columns 8/6 · (2 … 3).
    top, bottom = (1 + 1.2) * 14, (1 + 2.4) * 14
    scale_y = 94 / 100
    expected = [40.0, (top - 9) / scale_y, 60.0, (bottom - 9) / scale_y]
    assert geometry.boxes[4 + 7 + 2] == pytest.approx(expected)
