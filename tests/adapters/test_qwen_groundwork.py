"""Tiny Qwen2-VL / Qwen2.5-VL / Qwen3-VL checkpoints and their adapter: loading, image keys, geometry,
and what the model hands its decoder layers (M-RoPE positions, per-token inputs, DeepStack)."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from PIL import Image, ImageDraw
from transformers import AutoModelForImageTextToText, AutoProcessor
from transformers.utils import is_torchvision_available

from vistrace import adapters, compat
from vistrace.adapters import traced
from vistrace.adapters.base import PreparedPrompt
from vistrace.adapters.qwen2_vl import (
    QWEN_ADAPTERS,
    QWEN_PROCESSOR_CLASSES,
    Qwen2VLAdapter,
    load_qwen_processor,
    resized_size,
)
from vistrace.hook import Knockout, Plan
from vistrace.models.tiny_qwen import QWEN_FAMILIES, QWEN_SPECIAL_TOKENS, write_tiny_qwen
from vistrace.roles import Role

pytestmark = [pytest.mark.integration, pytest.mark.contract]

QUESTION = "What color is the circle?"


@dataclass(frozen=True)
class TinyQwen:
    path: Path
    model: Any
    processor: Any
    adapter: Qwen2VLAdapter


@pytest.fixture(scope="module")
def tiny_qwen(tmp_path_factory: pytest.TempPathFactory) -> dict[str, TinyQwen]:
    root = tmp_path_factory.mktemp("tiny_qwen")
    adapters = {adapter.model_type: adapter for adapter in QWEN_ADAPTERS}
    out: dict[str, TinyQwen] = {}
    for family in QWEN_FAMILIES:
        path = write_tiny_qwen(family, root / family)
        model = AutoModelForImageTextToText.from_pretrained(path).eval()
        out[family] = TinyQwen(path, model, load_qwen_processor(path), adapters[family])
    return out


def wide_image(width: int = 150, height: int = 70) -> Image.Image:
    """A non-square image (resized per axis by different factors) with a red block at the top-left."""
    image = Image.new("RGB", (width, height), (230, 230, 230))
    ImageDraw.Draw(image).rectangle([2, 2, width // 4, height // 3], fill=(220, 20, 20))
    return image


def _prepare(tiny: TinyQwen, image: Image.Image | None = None) -> PreparedPrompt:
    return tiny.adapter.prepare(tiny.model, tiny.processor, image or wide_image(), QUESTION)


# ----- loading ----------------------------------------------------------------------------------


@pytest.mark.parametrize("family", QWEN_FAMILIES)
def test_checkpoint_loads_offline(tiny_qwen: dict[str, TinyQwen], family: str) -> None:
    tiny = tiny_qwen[family]
    assert tiny.model.config.model_type == family
    processor_class = QWEN_PROCESSOR_CLASSES[family].__name__
    assert type(tiny.processor).__name__ == processor_class
    assert isinstance(tiny.processor, QWEN_PROCESSOR_CLASSES[family])
    saved = json.loads((tiny.path / "processor_config.json").read_text())
    assert saved["processor_class"] == processor_class
    tokenizer = tiny.processor.tokenizer
    for token in QWEN_SPECIAL_TOKENS:
        assert len(tokenizer(token, add_special_tokens=False)["input_ids"]) == 1
    assert tokenizer.convert_tokens_to_ids("<|image_pad|>") == tiny.model.config.image_token_id
    assert tokenizer.bos_token is None and tokenizer.eos_token == "<|im_end|>"
    if is_torchvision_available():
        assert type(AutoProcessor.from_pretrained(tiny.path)).__name__ == processor_class
    else:
        # Every Qwen video processor needs torchvision; AutoProcessor loads the video processor too.
        with pytest.raises((OSError, ValueError, ImportError), match=r"(?i)video processor|torchvision"):
            AutoProcessor.from_pretrained(tiny.path)
        assert not hasattr(tiny.processor, "video_processor")


@pytest.mark.parametrize("family", QWEN_FAMILIES)
def test_chat_template_frames_the_image(tiny_qwen: dict[str, TinyQwen], family: str) -> None:
    prepared = _prepare(tiny_qwen[family])
    text = prepared.prompt.text
    assert "<|vision_start|><|image_pad|><|vision_end|>" + QUESTION + "<|im_end|>" in text
    assert text.endswith("<|im_start|>assistant\n")
    assert text.startswith("<|im_start|>system\nYou are a helpful assistant.") == (family != "qwen3_vl")


# ----- image keys -------------------------------------------------------------------------------


@pytest.mark.parametrize("family", QWEN_FAMILIES)
def test_image_keys_are_the_model_features(tiny_qwen: dict[str, TinyQwen], family: str) -> None:
    tiny = tiny_qwen[family]
    prepared = _prepare(tiny)
    inputs = prepared.inputs
    merge = int(tiny.processor.image_processor.merge_size)
    with torch.no_grad():
        features = tiny.model.model.get_image_features(
            inputs["pixel_values"], inputs["image_grid_thw"]
        ).pooler_output
    n_features = sum(int(f.shape[0]) for f in features)
    keys = prepared.image_keys
    assert keys is not None
    assert len(keys) == n_features == int(inputs["image_grid_thw"].prod()) // merge**2
    assert torch.equal(keys, torch.arange(int(keys[0]), int(keys[0]) + n_features))
    ids = prepared.input_ids[0]
    config = tiny.model.config
    assert int(ids[keys[0] - 1]) == config.vision_start_token_id
    assert int(ids[keys[-1] + 1]) == config.vision_end_token_id
    assert bool((prepared.roles[keys] == Role.IMAGE).all())
    assert torch.equal(inputs["mm_token_type_ids"][0].nonzero().flatten(), keys)


# ----- geometry ---------------------------------------------------------------------------------


@pytest.mark.parametrize("family", QWEN_FAMILIES)
def test_geometry_tiles_the_resized_image(tiny_qwen: dict[str, TinyQwen], family: str) -> None:
    tiny = tiny_qwen[family]
    image = wide_image()
    prepared = _prepare(tiny, image)
    image_processor = tiny.processor.image_processor
    geometry = tiny.adapter.geometry_from_inputs(tiny.processor, prepared.inputs, image.size)
    from_size = tiny.adapter.geometry(tiny.model, tiny.processor, image.size)
    np.testing.assert_array_equal(geometry.boxes, from_size.boxes)
    assert prepared.image_keys is not None
    assert geometry.num_features == len(prepared.image_keys)
    height, width = resized_size(image_processor, image.size)
    _, grid_h, grid_w = prepared.inputs["image_grid_thw"][0].tolist()
    patch = int(image_processor.patch_size)
    assert (height, width) == (grid_h * patch, grid_w * patch)
    assert prepared.inputs["pixel_values"].shape[0] == grid_h * grid_w
    cell = patch * int(image_processor.merge_size)
    assert cell == (32 if family == "qwen3_vl" else 28)
    # Back on the resized canvas every box is one cell, and the cells tile it with no gap or overlap.
    scale = np.array([width / image.width, height / image.height] * 2)
    canvas = geometry.boxes * scale
    np.testing.assert_allclose(canvas[:, 2] - canvas[:, 0], cell)
    np.testing.assert_allclose(canvas[:, 3] - canvas[:, 1], cell)
    cover = np.zeros((height, width), dtype=int)
    for x0, y0, x1, y1 in np.rint(canvas).astype(int):
        cover[y0:y1, x0:x1] += 1
    assert bool((cover == 1).all())
    assert geometry.boxes.min() >= 0
    assert geometry.boxes[:, 2].max() == pytest.approx(image.width)
    assert geometry.boxes[:, 3].max() == pytest.approx(image.height)
    assert geometry.grids[0].rows * geometry.grids[0].cols == geometry.num_features


@pytest.mark.parametrize("family", QWEN_FAMILIES)
def test_known_feature_on_known_box(tiny_qwen: dict[str, TinyQwen], family: str) -> None:
    """150×70 px → 140×56 (Qwen2/2.5-VL) or 160×64 (Qwen3-VL): 2 × 5 features either way; feature 7
    (row 1, column 2) covers x 60…90, y 35…70 of the original image."""
    tiny = tiny_qwen[family]
    geometry = tiny.adapter.geometry(tiny.model, tiny.processor, (150, 70))
    assert (geometry.grids[0].rows, geometry.grids[0].cols) == (2, 5)
    np.testing.assert_allclose(geometry.boxes[7], [60.0, 35.0, 90.0, 70.0])


@pytest.mark.parametrize("family", QWEN_FAMILIES)
def test_geometry_order_is_the_models_rope_grid(tiny_qwen: dict[str, TinyQwen], family: str) -> None:
    """The height and width M-RoPE streams the model gives image feature j are its row and column."""
    tiny = tiny_qwen[family]
    image = wide_image(200, 90)
    prepared = _prepare(tiny, image)
    keys = prepared.image_keys
    assert keys is not None
    positions = tiny.adapter.position_ids(tiny.model, prepared.inputs)[:, 0]
    start = int(positions[0, keys[0]])
    rows, cols = (positions[1, keys] - start).numpy(), (positions[2, keys] - start).numpy()
    geometry = tiny.adapter.geometry(tiny.model, tiny.processor, image.size)
    grid = geometry.grids[0]
    assert grid.rows > 1 and grid.cols > grid.rows
    np.testing.assert_array_equal(rows, np.arange(geometry.num_features) // grid.cols)
    np.testing.assert_array_equal(cols, np.arange(geometry.num_features) % grid.cols)
    sx, sy = grid.box[2] / grid.cols, grid.box[3] / grid.rows
    np.testing.assert_allclose(geometry.boxes[:, 0], cols * sx)
    np.testing.assert_allclose(geometry.boxes[:, 1], rows * sy)


# ----- what the decoder layers receive ---------------------------------------------------------


def _layer_arguments(model: Any, layer: int, run: Any) -> dict[str, Any]:
    seen: dict[str, Any] = {}

    def grab(module: torch.nn.Module, args: tuple[Any, ...], kwargs: dict[str, Any]) -> None:
        if not seen:
            seen.update(kwargs, _positional=len(args))

    handle = model.get_decoder().layers[layer].register_forward_pre_hook(grab, with_kwargs=True)
    try:
        with torch.no_grad():
            run()
    finally:
        handle.remove()
    return seen


@pytest.mark.parametrize("family", QWEN_FAMILIES)
def test_decoder_layer_arguments(tiny_qwen: dict[str, TinyQwen], family: str) -> None:
    tiny = tiny_qwen[family]
    model = tiny.model
    inputs = _prepare(tiny).inputs
    length = int(inputs["input_ids"].shape[1])
    head_dim = model.config.text_config.hidden_size // model.config.text_config.num_attention_heads
    plain = _layer_arguments(model, 0, lambda: model(**inputs))
    cache_argument = compat.decoder_cache_argument(compat.decoder_layers(model)[0])
    expected = {"attention_mask", "position_embeddings", "position_ids", cache_argument, "_positional"}
    if family != "qwen3_vl":
        expected.add("use_cache")
    assert set(plain) == expected
    assert plain["_positional"] == 1  # hidden_states
    assert plain["position_ids"] is None
    cos, sin = plain["position_embeddings"]
    assert tuple(cos.shape) == tuple(sin.shape) == (1, length, head_dim)
    generated = _layer_arguments(
        model, 0, lambda: model.generate(**inputs, max_new_tokens=1, do_sample=False)
    )
    assert tuple(generated["position_ids"].shape) == (1, length)
    torch.testing.assert_close(generated["position_ids"][0], torch.arange(length))
    positions = tiny.adapter.position_ids(model, inputs)
    assert tuple(positions.shape) == (3, 1, length)
    keys = _prepare(tiny).image_keys
    assert keys is not None
    # Text after the image resumes at the image's largest position + 1; the three streams agree on text.
    after = int(keys[-1]) + 1
    assert int(positions[:, 0, after].unique()) == int(positions[:, 0, keys].max()) + 1
    assert bool((positions[:, 0, :after] <= positions[0, 0, after]).all())


@pytest.mark.parametrize("family", QWEN_FAMILIES)
def test_answer_tokens_need_extended_token_types(tiny_qwen: dict[str, TinyQwen], family: str) -> None:
    """A prompt + answer sequence with `mm_token_type_ids` extended by zeros gives the same logits as
    stepping the answer from the prompt's cache (positions from the model's `rope_deltas`); without
    the extension the model cannot place the answer tokens."""
    tiny = tiny_qwen[family]
    model = tiny.model
    inputs = _prepare(tiny).inputs
    answer = torch.tensor([tiny.processor.tokenizer("red circle", add_special_tokens=False)["input_ids"]])
    full_ids = torch.cat([inputs["input_ids"], answer], dim=1)
    extended = tiny.adapter.extend_inputs(inputs, full_ids)
    assert extended["mm_token_type_ids"].shape == full_ids.shape
    with torch.no_grad():
        full = model(**extended).logits
        prompt = model(**inputs, use_cache=True)
        # No attention mask: with one, the model takes positions from the mask's cumulative sum over
        # the whole sequence (S + n values for n new tokens).
        continued = {compat.model_cache_argument(model): compat.output_cache(prompt)}
        stepped = model(input_ids=answer, **continued, use_cache=True).logits
        torch.testing.assert_close(full[:, -answer.shape[1] :], stepped, atol=1e-5, rtol=1e-5)
        stale = {**inputs, "input_ids": full_ids, "attention_mask": torch.ones_like(full_ids)}
        with pytest.raises((IndexError, RuntimeError)):
            model(**stale)


# ----- Qwen3-VL DeepStack ----------------------------------------------------------------------


def test_deepstack_adds_features_outside_attention(
    tiny_qwen: dict[str, TinyQwen], monkeypatch: pytest.MonkeyPatch
) -> None:
    """After decoder layers 0-2 Qwen3-VL adds one DeepStack feature set to the image rows; a knockout
    that keeps image rows away from every image key leaves these additions in place."""
    tiny = tiny_qwen["qwen3_vl"]
    monkeypatch.setitem(adapters._REGISTRY, "qwen3_vl", tiny.adapter)
    model = tiny.model
    prepared = _prepare(tiny)
    keys = prepared.image_keys
    assert keys is not None
    assert tiny.adapter.deepstack_layers(model) == (0, 1, 2)
    assert tiny_qwen["qwen2_vl"].adapter.deepstack_layers(tiny_qwen["qwen2_vl"].model) == ()
    decoder = model.get_decoder()
    n_layers = len(decoder.layers)
    captured: dict[str, Any] = {}

    def text_model_inputs(module: torch.nn.Module, args: tuple[Any, ...], kwargs: dict[str, Any]) -> None:
        captured["masks"] = kwargs["visual_pos_masks"]
        captured["deepstack"] = kwargs["deepstack_visual_embeds"]

    def layer_io(index: int) -> tuple[Any, Any]:
        def before(module: torch.nn.Module, args: tuple[Any, ...]) -> None:
            captured[f"in{index}"] = args[0].clone()

        def after(module: torch.nn.Module, args: tuple[Any, ...], output: Any) -> None:
            captured[f"out{index}"] = (output[0] if isinstance(output, tuple) else output).clone()

        return before, after

    handles = [decoder.register_forward_pre_hook(text_model_inputs, with_kwargs=True)]
    for index in range(n_layers):
        before, after = layer_io(index)
        handles.append(decoder.layers[index].register_forward_pre_hook(before))
        handles.append(decoder.layers[index].register_forward_hook(after))
    roles = prepared.roles
    knockout = Knockout(
        roles=roles[None],
        src=torch.tensor([int(Role.IMAGE)], dtype=torch.int8),
        dst=torch.tensor([int(Role.IMAGE)], dtype=torch.int8),
        layers=torch.ones(1, n_layers, dtype=torch.bool),
    )
    try:
        with torch.no_grad(), traced(model, Plan(cross_layers=frozenset(), knockout=knockout)):
            model(**prepared.inputs)
    finally:
        for handle in handles:
            handle.remove()
    image_rows = torch.zeros(roles.shape[0], dtype=torch.bool)
    image_rows[keys] = True
    assert torch.equal(captured["masks"][0], image_rows)
    assert len(captured["deepstack"]) == 3
    for index in range(n_layers - 1):
        added = captured[f"in{index + 1}"][0] - captured[f"out{index}"][0]
        torch.testing.assert_close(added[~image_rows], torch.zeros_like(added[~image_rows]))
        if index < 3:
            torch.testing.assert_close(added[image_rows], captured["deepstack"][index], atol=1e-5, rtol=1e-5)
            assert float(captured["deepstack"][index].abs().max()) > 0
        else:
            torch.testing.assert_close(added, torch.zeros_like(added))
