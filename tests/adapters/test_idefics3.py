"""Idefics3 on a tiny offline checkpoint: loading, frame roles, geometry (the seam proofs run in the
family-parametrized tests: the family is in `vistrace.models.tiny.FAMILIES`)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from PIL import Image, ImageDraw

from vistrace.models.loading import LoadedModel, load

from .square_proofs import assert_frame_tokens_are_template, assert_image_keys_equal_the_model_features

pytestmark = [pytest.mark.integration, pytest.mark.contract]

QUESTION = "What color is the circle?"


@pytest.fixture(scope="module")
def checkpoint(tiny_dirs: dict[str, Path]) -> Path:
    """The session's tiny idefics3 checkpoint (tests/conftest.py; one thread, adapters registered)."""
    return tiny_dirs["idefics3"]


@pytest.fixture(scope="module")
def loaded(checkpoint: Path) -> LoadedModel:
    return load(checkpoint)


def test_loads_offline_with_the_family_classes(loaded: LoadedModel) -> None:
    assert type(loaded.model).__name__ == "Idefics3ForConditionalGeneration"
    assert type(loaded.processor).__name__ == "Idefics3Processor"
    assert loaded.adapter.model_type == "idefics3"


def test_image_keys_equal_the_model_features_for_a_non_square_image(loaded: LoadedModel) -> None:
    assert_image_keys_equal_the_model_features(loaded, QUESTION, 27)  # 1 × 2 squares + global, 9 each


def test_frame_tokens_are_template(loaded: LoadedModel) -> None:
    assert_frame_tokens_are_template(loaded, QUESTION)


def test_pixel_shuffle_keeps_features_row_major(loaded: LoadedModel) -> None:
    # A 6 × 6 patch grid whose value is its patch index: feature (i, j) gathers patches (2i + a, 2j + b).
    patches = torch.arange(36, dtype=torch.float32).reshape(1, 36, 1)
    shuffled = loaded.model.model.connector.pixel_shuffle(patches, 2).reshape(9, -1)
    for feature in range(9):
        i, j = divmod(feature, 3)
        expected = {(2 * i + a) * 6 + 2 * j + b for a in (0, 1) for b in (0, 1)}
        assert set(shuffled[feature].tolist()) == expected


def test_geometry_places_a_known_feature_on_its_pixels(loaded: LoadedModel) -> None:
    # 96 × 32 → long side 84 → canvas 84 × 42: one row of two 42-px squares, 3 × 3 features each.
    image = Image.new("RGB", (96, 32), (255, 255, 255))
    geometry = loaded.adapter.geometry(loaded.model, loaded.processor, image.size)
    feature = 9 + 4  # second square, centre feature
    assert geometry.boxes[feature] == pytest.approx([64.0, 32 / 3, 80.0, 64 / 3])
    assert geometry.boxes[18] == pytest.approx([0.0, 0.0, 32.0, 32 / 3])  # global image, first cell
    assert [g.box for g in geometry.grids] == [(0, 0, 48, 32), (48, 0, 96, 32), (0, 0, 96, 32)]
    # The processor's own pixels agree: red drawn in that box is reddest in that feature's cell.
    ImageDraw.Draw(image).rectangle([64, 11, 79, 20], fill=(255, 0, 0))
    inputs = loaded.processor(images=image, text="<image>", return_tensors="pt")
    square = inputs["pixel_values"][0, 1]  # (3, 42, 42), normalised
    redness = (square[0] - square[1]).unfold(0, 14, 14).unfold(1, 14, 14).mean(dim=(-1, -2)).flatten()
    assert int(redness.argmax()) == 4
