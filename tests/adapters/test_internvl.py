"""InternVL (`-hf`) on a tiny offline checkpoint: loading, delimiter roles, geometry (the seam proofs run
in the family-parametrized tests: the family is in `vistrace.models.tiny.FAMILIES`)."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from PIL import Image, ImageDraw

from vistrace.adapters import UnsupportedModelError, get_adapter
from vistrace.models.loading import LoadedModel, load
from vistrace.roles import Role

from ..conftest import scene_image

pytestmark = [pytest.mark.integration, pytest.mark.contract]

QUESTION = "What color is the circle?"


@pytest.fixture(scope="module")
def checkpoint(tiny_dirs: dict[str, Path]) -> Path:
    """The session's tiny internvl checkpoint (tests/conftest.py; one thread, adapters registered)."""
    return tiny_dirs["internvl"]


@pytest.fixture(scope="module")
def loaded(checkpoint: Path) -> LoadedModel:
    return load(checkpoint)


def test_loads_offline_with_the_family_classes(loaded: LoadedModel) -> None:
    assert type(loaded.model).__name__ == "InternVLForConditionalGeneration"
    assert type(loaded.processor).__name__ == "InternVLProcessor"
    assert loaded.adapter.model_type == "internvl"


def test_remote_code_checkpoints_are_refused_in_one_line(checkpoint: Path) -> None:
    remote = SimpleNamespace(model_type="internvl_chat", architectures=["InternVLChatModel"])
    with pytest.raises(UnsupportedModelError, match=r"-hf"):
        get_adapter(remote)


@pytest.mark.parametrize(("size", "tiles"), [((48, 32), 3), ((96, 32), 4), ((30, 30), 1)])
def test_image_keys_equal_the_model_features(loaded: LoadedModel, size: tuple[int, int], tiles: int) -> None:
    image = scene_image(*size)
    prepared = loaded.adapter.prepare(loaded.model, loaded.processor, image, QUESTION)
    pixel_values = prepared.inputs["pixel_values"]
    assert pixel_values.shape[0] == tiles
    with torch.no_grad():
        features = loaded.model.model.get_image_features(
            pixel_values,
            vision_feature_layer=loaded.model.config.vision_feature_layer,
            vision_feature_select_strategy=loaded.model.config.vision_feature_select_strategy,
        ).pooler_output
    assert prepared.image_keys is not None
    assert len(prepared.image_keys) == features.reshape(-1, features.shape[-1]).shape[0] == 4 * tiles
    geometry = loaded.adapter.geometry(loaded.model, loaded.processor, image.size)
    assert geometry.num_features == len(prepared.image_keys)


def test_delimiters_are_template(loaded: LoadedModel) -> None:
    prepared = loaded.adapter.prepare(loaded.model, loaded.processor, scene_image(), QUESTION)
    tokens = loaded.processor.tokenizer.convert_ids_to_tokens(prepared.input_ids[0].tolist())
    delimiters = [i for i, t in enumerate(tokens) if t in ("<img>", "</img>")]
    assert len(delimiters) == 2
    assert all(int(prepared.roles[i]) == Role.TEMPLATE for i in delimiters)
    assert prepared.image_keys is not None
    assert torch.equal(torch.nonzero(prepared.roles == Role.IMAGE).flatten(), prepared.image_keys)
    assert prepared.image_keys.tolist() == list(range(delimiters[0] + 1, delimiters[1]))
    question = "".join(t for t, r in zip(tokens, prepared.roles.tolist(), strict=True) if r == Role.QUESTION)
    assert question.replace("Ġ", " ") == QUESTION


def test_pixel_shuffle_keeps_features_row_major(loaded: LoadedModel) -> None:
    # A 4 × 4 grid whose value is its patch index: feature (i, j) gathers patches (2i + a, 2j + b).
    grid = torch.arange(16, dtype=torch.float32).reshape(1, 4, 4, 1).repeat(1, 1, 1, 2)
    shuffled = loaded.model.model.pixel_shuffle(grid, scale_factor=0.5).reshape(4, -1)
    for feature in range(4):
        i, j = divmod(feature, 2)
        expected = {(2 * i + a) * 4 + 2 * j + b for a in (0, 1) for b in (0, 1)}
        assert set(shuffled[feature].tolist()) == expected


def test_geometry_places_a_known_feature_on_its_pixels(loaded: LoadedModel) -> None:
    # 96 × 32 → a 3 × 1 canvas of 28-px tiles + a thumbnail, 2 × 2 features per tile.
    image = Image.new("RGB", (96, 32), (255, 255, 255))
    geometry = loaded.adapter.geometry(loaded.model, loaded.processor, image.size)
    feature = 2 * 4 + 3  # third tile, bottom-right feature
    assert geometry.boxes[feature] == pytest.approx([80.0, 16.0, 96.0, 32.0])
    assert geometry.boxes[12] == pytest.approx([0.0, 0.0, 48.0, 16.0])  # thumbnail, first cell
    assert [g.box for g in geometry.grids] == [
        (0, 0, 32, 32),
        (32, 0, 64, 32),
        (64, 0, 96, 32),
        (0, 0, 96, 32),
    ]
    # The processor's own pixels agree: red drawn in that box is reddest in that feature's cell.
    ImageDraw.Draw(image).rectangle([82, 18, 93, 29], fill=(255, 0, 0))
    inputs = loaded.processor(images=image, text="<IMG_CONTEXT>", return_tensors="pt")
    tile = inputs["pixel_values"][2]  # (3, 28, 28), normalised
    redness = (tile[0] - tile[1]).unfold(0, 14, 14).unfold(1, 14, 14).mean(dim=(-1, -2)).flatten()
    assert int(redness.argmax()) == 3
