"""LLaVA-NeXT on a tiny offline checkpoint: loading, anyres geometry, newline features (the seam proofs
run in the family-parametrized tests: the family is in `vistrace.models.tiny.FAMILIES`)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image, ImageDraw

from vistrace.adapters.llava_next import LlavaNextAdapter
from vistrace.models.loading import LoadedModel, load
from vistrace.roles import Role

from ..conftest import scene_image

pytestmark = [pytest.mark.integration, pytest.mark.contract]

QUESTION = "What color is the circle?"


@pytest.fixture(scope="module")
def checkpoint(tiny_dirs: dict[str, Path]) -> Path:
    """The session's tiny llava_next checkpoint (tests/conftest.py; one thread, adapters registered)."""
    return tiny_dirs["llava_next"]


@pytest.fixture(scope="module")
def loaded(checkpoint: Path) -> LoadedModel:
    return load(checkpoint)


def _image_features(loaded: LoadedModel, inputs: dict[str, torch.Tensor]) -> torch.Tensor:
    """(N, hidden) packed features of the one image of `inputs`, as the model scatters them."""
    with torch.no_grad():
        output = loaded.model.model.get_image_features(inputs["pixel_values"], inputs["image_sizes"])
    features = output.pooler_output
    assert len(features) == 1
    return features[0]


def test_loads_offline_with_the_family_classes(loaded: LoadedModel) -> None:
    assert type(loaded.model).__name__ == "LlavaNextForConditionalGeneration"
    assert type(loaded.processor).__name__ == "LlavaNextProcessor"
    assert type(loaded.processor.image_processor).__name__ == "LlavaNextImageProcessorPil"
    assert loaded.adapter.model_type == "llava_next"


@pytest.mark.parametrize("size", [(64, 40), (48, 32), (32, 64), (96, 32)])
def test_image_keys_and_newlines_match_the_model_features(loaded: LoadedModel, size: tuple[int, int]) -> None:
    image = scene_image(*size)
    prepared = loaded.adapter.prepare(loaded.model, loaded.processor, image, QUESTION)
    features = _image_features(loaded, prepared.inputs)
    assert prepared.image_keys is not None
    assert len(prepared.image_keys) == features.shape[0]
    assert torch.equal(torch.nonzero(prepared.roles == Role.IMAGE).flatten(), prepared.image_keys)
    geometry = loaded.adapter.geometry(loaded.model, loaded.processor, image.size)
    assert geometry.num_features == features.shape[0]
    # The learned newline vector sits exactly where the geometry puts the newlines.
    adapter = loaded.adapter
    assert isinstance(adapter, LlavaNextAdapter)
    newline = loaded.model.model.image_newline
    is_newline = (features == newline).all(dim=-1).numpy()
    expected = np.zeros(len(is_newline), dtype=bool)
    expected[adapter.newline_features(loaded.model, loaded.processor, image.size)] = True
    assert np.array_equal(is_newline, expected)
    assert all(geometry.kinds[j] == "padding" for j in np.flatnonzero(expected))
    assert np.isnan(geometry.boxes[expected]).all()
    # Newline positions are image keys: roles say IMAGE there.
    keys = prepared.image_keys[torch.from_numpy(np.flatnonzero(expected))]
    assert bool((prepared.roles[keys] == Role.IMAGE).all())


def test_base_features_come_first(loaded: LoadedModel) -> None:
    prepared = loaded.adapter.prepare(loaded.model, loaded.processor, scene_image(64, 40), QUESTION)
    features = _image_features(loaded, prepared.inputs)
    model = loaded.model.model
    with torch.no_grad():
        hidden = model.vision_tower(prepared.inputs["pixel_values"][0, :1], output_hidden_states=True)
        base = model.multi_modal_projector(hidden.hidden_states[-2][0, 1:])
    torch.testing.assert_close(features[: base.shape[0]], base)


def test_geometry_places_known_features_on_their_pixels(loaded: LoadedModel) -> None:
    # 64 × 40 → canvas 42 × 84 (1 × 2 tiles, 3 × 6 features of 14 px); the image is resized to
    # 68 × 42 and pasted 8 px right; unpadding keeps grid columns 1 … 4.
    image = Image.new("RGB", (64, 40), (255, 255, 255))
    geometry = loaded.adapter.geometry(loaded.model, loaded.processor, image.size)
    assert geometry.num_features == 9 + 3 * (4 + 1)
    # The base tile covers the whole image.
    base = geometry.boxes[:9]
    assert base[:, :2].min() == 0.0 and tuple(base[:, 2:].max(axis=0)) == (64.0, 40.0)
    assert geometry.grids[0].box == (0.0, 0.0, 64.0, 40.0)
    assert geometry.boxes[1] == pytest.approx([64 / 3, 0.0, 128 / 3, 40 / 3])
    # Kept row 1, kept column 1 (grid row 1, column 2): canvas (28, 14)-(42, 28).
    feature = 9 + 5 + 1
    scale_x, scale_y = 68 / 64, 42 / 40
    assert geometry.boxes[feature] == pytest.approx([20 / scale_x, 14 / scale_y, 34 / scale_x, 28 / scale_y])
    assert geometry.kinds[feature] == "patch"
    # The processor's own pixels agree: red drawn in that box is reddest in that canvas cell.
    ImageDraw.Draw(image).rectangle([20, 15, 31, 25], fill=(255, 0, 0))
    inputs = loaded.processor(images=image, text="<image>", return_tensors="pt")
    tiles = inputs["pixel_values"][0, 1:]  # (2, 3, 42, 42): the 1 × 2 canvas tiles
    canvas = torch.cat([tiles[0], tiles[1]], dim=2)
    redness = (canvas[0] - canvas[1]).unfold(0, 14, 14).unfold(1, 14, 14).mean(dim=(-1, -2))
    assert divmod(int(redness.argmax()), 6) == (1, 2)
