"""SmolVLM on a tiny offline checkpoint: the Idefics3 adapter's contracts probed on SmolVLM's own classes
(loading, its processor for images only, frame roles, the connector's scale-4 pixel shuffle, geometry)
and the seam proofs (the family is not in `vistrace.models.tiny.FAMILIES`, so it gets them from
`seam_proofs`)."""

from __future__ import annotations

import inspect
import re
from pathlib import Path
from typing import Any

import pytest
import torch
from PIL import Image, ImageDraw
from transformers import SmolVLMProcessor
from transformers.models.smolvlm import processing_smolvlm

from vistrace import compat
from vistrace.adapters import get_adapter
from vistrace.adapters.idefics3 import SmolVLMAdapter, smolvlm_image_only_processor_class
from vistrace.models.loading import LoadedModel, load
from vistrace.models.tiny_smolvlm import write_tiny_smolvlm

from ..conftest import scene_image
from .seam_proofs import assert_captured_rows_equal_eager, assert_fast_equals_naive, assert_seam_checks_pass
from .square_proofs import assert_frame_tokens_are_template, assert_image_keys_equal_the_model_features

pytestmark = [pytest.mark.integration, pytest.mark.contract]

QUESTION = "What color is the circle?"


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_tiny_smolvlm(tmp_path_factory.mktemp("smolvlm") / "tiny")


@pytest.fixture(scope="module")
def loaded(checkpoint: Path) -> LoadedModel:
    return load(checkpoint)


def test_loads_offline_with_the_family_classes(loaded: LoadedModel) -> None:
    assert type(loaded.model).__name__ == "SmolVLMForConditionalGeneration"
    assert isinstance(loaded.processor, SmolVLMProcessor)
    assert type(loaded.processor.image_processor).__name__.startswith("SmolVLMImageProcessor")
    assert isinstance(loaded.adapter, SmolVLMAdapter)
    assert get_adapter("smolvlm") is loaded.adapter


def test_the_image_only_processor_keeps_what_smolvlm_sets() -> None:
    """The image-only processor replaces `SmolVLMProcessor.__init__` (which needs num2words and a video
    processor): it must take the same arguments but the video processor, and set every attribute it
    sets; the image paths are SmolVLM's own, inherited."""
    parameters = list(inspect.signature(SmolVLMProcessor.__init__).parameters)
    assert parameters == [
        "self",
        "image_processor",
        "tokenizer",
        "video_processor",
        "image_seq_len",
        "chat_template",
        "kwargs",
    ]
    image_only = smolvlm_image_only_processor_class()
    own = list(inspect.signature(image_only.__init__).parameters)
    assert own == [p for p in parameters if p != "video_processor"]
    upstream = set(re.findall(r"self\.(\w+) = ", inspect.getsource(SmolVLMProcessor.__init__)))
    ours = set(re.findall(r"self\.(\w+) = ", inspect.getsource(image_only.__init__)))
    assert upstream and upstream == ours
    for method in ("replace_image_token", "validate_inputs", "prepare_inputs_layout"):
        assert getattr(image_only, method) is getattr(SmolVLMProcessor, method), method


def test_load_processor_takes_the_full_processor_where_both_packages_are_installed(
    checkpoint: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import transformers.utils

    loaded_paths: list[Any] = []

    class FakeAuto:
        @staticmethod
        def from_pretrained(path: Any) -> str:
            loaded_paths.append(path)
            return "full processor"

    monkeypatch.setattr(compat, "auto_classes", lambda: (None, FakeAuto))
    adapter = SmolVLMAdapter()
    monkeypatch.setattr(transformers.utils, "is_torchvision_available", lambda: True)
    monkeypatch.setattr(transformers.utils, "is_num2words_available", lambda: False)
    assert type(adapter.load_processor(checkpoint)).__name__ == "SmolVLMProcessor"
    monkeypatch.setattr(transformers.utils, "is_num2words_available", lambda: True)
    assert adapter.load_processor(checkpoint) == "full processor"
    assert loaded_paths == [checkpoint]


@pytest.mark.parametrize(("size", "rows", "cols"), [((96, 32), 1, 2), ((48, 32), 2, 2), ((30, 60), 2, 1)])
def test_prompt_expansion_is_smolvlms(
    loaded: LoadedModel, size: tuple[int, int], rows: int, cols: int
) -> None:
    """The `<image>` of the chat template becomes transformers' SmolVLM prompt string for the rows and
    columns the image processor reports."""
    prepared = loaded.adapter.prepare(loaded.model, loaded.processor, scene_image(*size), QUESTION)
    processor = loaded.processor
    expected = processing_smolvlm.get_image_prompt_string(
        rows, cols, 16, "<fake_token_around_image>", "<image>", "<global-img>"
    )
    text = prepared.prompt.text.replace("<image>", expected)
    ids = processor.tokenizer(text, add_special_tokens=prepared.prompt.add_special_tokens)["input_ids"]
    assert prepared.input_ids[0].tolist() == ids
    assert prepared.image_keys is not None
    assert len(prepared.image_keys) == 16 * (rows * cols + 1)


def test_image_keys_equal_the_model_features_for_a_non_square_image(loaded: LoadedModel) -> None:
    assert_image_keys_equal_the_model_features(loaded, QUESTION, 48)  # 1 × 2 squares + global, 16 each


def test_frame_tokens_are_template(loaded: LoadedModel) -> None:
    assert_frame_tokens_are_template(loaded, QUESTION)


def test_pixel_shuffle_keeps_features_row_major(loaded: LoadedModel) -> None:
    # A 16 × 16 patch grid whose value is its patch index: with SmolVLM's scale factor 4, feature (i, j)
    # gathers patches (4i + a, 4j + b).
    assert loaded.model.config.scale_factor == 4
    patches = torch.arange(256, dtype=torch.float32).reshape(1, 256, 1)
    shuffled = loaded.model.model.connector.pixel_shuffle(patches, 4).reshape(16, -1)
    for feature in range(16):
        i, j = divmod(feature, 4)
        expected = {(4 * i + a) * 16 + 4 * j + b for a in range(4) for b in range(4)}
        assert set(shuffled[feature].tolist()) == expected


def test_geometry_places_a_known_feature_on_its_pixels(loaded: LoadedModel) -> None:
    # 96 × 32 → long side 128 → canvas 128 × 64: one row of two 64-px squares, 4 × 4 features each.
    image = Image.new("RGB", (96, 32), (255, 255, 255))
    geometry = loaded.adapter.geometry(loaded.model, loaded.processor, image.size)
    feature = 16 + 4 + 2  # second square, row 1, column 2
    assert geometry.boxes[feature] == pytest.approx([72.0, 8.0, 84.0, 16.0])
    assert geometry.boxes[32] == pytest.approx([0.0, 0.0, 24.0, 8.0])  # global image, first cell
    assert [g.box for g in geometry.grids] == [(0, 0, 48, 32), (48, 0, 96, 32), (0, 0, 96, 32)]
    # The processor's own pixels agree: red drawn in that box is reddest in that feature's cell.
    ImageDraw.Draw(image).rectangle([73, 9, 82, 14], fill=(255, 0, 0))
    inputs = loaded.processor(images=image, text="<image>", return_tensors="pt")
    square = inputs["pixel_values"][0, 1]  # (3, 64, 64), normalised
    redness = (square[0] - square[1]).unfold(0, 16, 16).unfold(1, 16, 16).mean(dim=(-1, -2)).flatten()
    assert int(redness.argmax()) == 6


def test_seam_checks_pass(loaded: LoadedModel) -> None:
    assert_seam_checks_pass(loaded)


@pytest.mark.parametrize("mode", ["strict", "paper"])
@pytest.mark.parametrize("k", [1, 3, 9])
@pytest.mark.parametrize("answer", [[57], [57, 88, 101]])
def test_fast_equals_naive(loaded: LoadedModel, mode: str, k: int, answer: list[int]) -> None:
    assert_fast_equals_naive(loaded, mode, k, answer)


def test_captured_rows_equal_eager_attention(loaded: LoadedModel, checkpoint: Path) -> None:
    assert_captured_rows_equal_eager(loaded, checkpoint)
