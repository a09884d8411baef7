"""Capture of image attention during generation, for every supported family."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image, ImageDraw
from transformers import AutoModelForImageTextToText

from vistrace.adapters import get_adapter
from vistrace.capture.generate import StageCapture, capture
from vistrace.hook.plan import CaptureRecorder
from vistrace.models.loading import LoadedModel, load
from vistrace.models.tiny import FAMILIES
from vistrace.plots.attention_maps import feature_raster, grid_canvas

from ..conftest import scene_image

pytestmark = [pytest.mark.integration, pytest.mark.contract]

QUESTION = "What color is the circle?"


@pytest.fixture(scope="module", autouse=True)
def one_thread() -> Iterator[None]:
    """Tiny models gain nothing from threads; one avoids oversubscribing a shared machine."""
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


@pytest.fixture(scope="module")
def models(tiny_dirs: dict[str, Path]) -> dict[str, LoadedModel]:
    return {family: load(path) for family, path in tiny_dirs.items()}


@pytest.fixture(scope="module")
def eager_models(tiny_dirs: dict[str, Path]) -> dict[str, torch.nn.Module]:
    eager = {}
    for family, path in tiny_dirs.items():
        model = AutoModelForImageTextToText.from_pretrained(path, attn_implementation="eager").eval()
        get_adapter(model).prepare_model(model)
        eager[family] = model
    return eager


def _eager_rows(loaded: LoadedModel, eager: torch.nn.Module, result: StageCapture) -> torch.Tensor:
    """(T, layers, heads, N) attention of the rows that predicted each generated token, from one
    eager forward over prompt + output with `output_attentions=True`."""
    prepared = loaded.adapter.prepare(loaded.model, loaded.processor, scene_image(), QUESTION)
    prompt_len, count = len(result.input_ids), result.num_tokens
    fed = torch.tensor([[*result.input_ids, *result.output_ids[:-1]]])
    inputs = loaded.adapter.extend_inputs(prepared.inputs, fed)
    with torch.no_grad():
        attentions = eager(**inputs, output_attentions=True).attentions
    per_layer = []
    for layer in result.layers:
        rows = attentions[layer][0, :, prompt_len - 1 : prompt_len - 1 + count]
        if prepared.image_keys is not None:
            rows = rows[..., prepared.image_keys]
        per_layer.append(rows.permute(1, 0, 2))
    return torch.stack(per_layer, dim=1)


@pytest.mark.parametrize("family", FAMILIES)
def test_captured_rows_equal_eager_attention(
    models: dict[str, LoadedModel], eager_models: dict[str, torch.nn.Module], family: str
) -> None:
    loaded = models[family]
    result = capture(loaded, scene_image(), QUESTION, max_new_tokens=8, dtype=torch.float32)
    every_layer = tuple(range(loaded.adapter.num_layers(loaded.model)))
    assert result.layers == {"llava": (0, 1, 2, 3), "mllama": (3, 8)}.get(family, every_layer)
    reference = _eager_rows(loaded, eager_models[family], result)
    assert result.image_attention.shape == reference.shape
    torch.testing.assert_close(result.image_attention, reference, atol=1e-5, rtol=0)


@pytest.mark.parametrize("family", FAMILIES)
def test_greedy_tokens_unchanged_by_capture(models: dict[str, LoadedModel], family: str) -> None:
    loaded = models[family]
    prepared = loaded.adapter.prepare(loaded.model, loaded.processor, scene_image(), QUESTION)
    with torch.no_grad():
        plain = loaded.model.generate(**prepared.inputs, do_sample=False, max_new_tokens=10)
    result = capture(loaded, scene_image(), QUESTION, max_new_tokens=10)
    assert result.output_ids == tuple(plain[0, prepared.input_ids.shape[1] :].tolist())
    assert result.input_ids == tuple(prepared.input_ids[0].tolist())
    assert result.num_tokens == result.image_attention.shape[0] == 10


@pytest.mark.parametrize("family", FAMILIES)
def test_memory_per_generated_token(models: dict[str, LoadedModel], family: str) -> None:
    loaded = models[family]
    result = capture(loaded, scene_image(), QUESTION, max_new_tokens=5)
    text_config = loaded.model.config.text_config
    layers = len(loaded.adapter.image_layers(loaded.model))
    heads = int(text_config.num_attention_heads)
    features = result.geometry.num_features
    tensor = result.image_attention
    assert tensor.dtype == torch.float16
    per_token = tensor.numel() * tensor.element_size() // tensor.shape[0]
    assert per_token == layers * heads * features * 2
    if family in ("llava", "mllama"):
        assert per_token == {"llava": 4 * 4 * 16 * 2, "mllama": 2 * 4 * 10 * 2}[family]


@pytest.mark.parametrize("family", FAMILIES)
def test_stop_on_eos_keeps_one_row_per_token(models: dict[str, LoadedModel], family: str) -> None:
    loaded = models[family]
    free = capture(loaded, scene_image(), QUESTION, max_new_tokens=6)
    stop_token = free.output_ids[2]
    config = loaded.model.generation_config
    previous = config.eos_token_id
    config.eos_token_id = stop_token
    try:
        stopped = capture(loaded, scene_image(), QUESTION, max_new_tokens=6)
    finally:
        config.eos_token_id = previous
    end = free.output_ids.index(stop_token) + 1
    assert stopped.output_ids == free.output_ids[:end]
    assert stopped.ends_with_eos and stopped.content_tokens == end - 1
    assert torch.equal(stopped.image_attention, free.image_attention[:end])


def test_conversation_prompt_equals_text_prompt(models: dict[str, LoadedModel]) -> None:
    loaded = models["llava"]
    conversation = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": QUESTION}]}]
    from_text = capture(loaded, scene_image(), QUESTION, max_new_tokens=4)
    from_conversation = capture(loaded, scene_image(), conversation, max_new_tokens=4)
    assert from_conversation.prompt_text == from_text.prompt_text
    assert from_conversation.prompt_text.endswith(f" USER: <image>\n{QUESTION} ASSISTANT:")
    assert torch.equal(from_conversation.image_attention, from_text.image_attention)


def test_stage_capture_round_trip(models: dict[str, LoadedModel]) -> None:
    result = capture(models["mllama"], scene_image(), QUESTION, max_new_tokens=3, sample=True)
    rebuilt = StageCapture.from_dict(result.to_dict(), result.image_attention.clone())
    assert rebuilt.to_dict() == result.to_dict()
    assert torch.equal(rebuilt.image_attention, result.image_attention)
    with pytest.raises(ValueError, match="shape"):
        StageCapture.from_dict(result.to_dict(), result.image_attention[:1])


def _feature_patch(
    loaded: LoadedModel, pixel_values: torch.Tensor, feature: int
) -> tuple[torch.Tensor, list[torch.Tensor]]:
    """The processor's pixels of `feature` and of every patch feature, in feature order."""
    patch = int(loaded.model.config.vision_config.patch_size)
    patches: list[torch.Tensor] = []
    if loaded.adapter.family == "inline":
        side = pixel_values.shape[-1] // patch
        for index in range(side * side):
            r, c = divmod(index, side)
            patches.append(pixel_values[0, :, r * patch : (r + 1) * patch, c * patch : (c + 1) * patch])
        return patches[feature], patches
    tiles = pixel_values[0, 0]
    side = tiles.shape[-1] // patch
    per_tile = side * side + 1
    by_feature: list[torch.Tensor] = []
    for index in range(tiles.shape[0] * per_tile):
        tile, local = divmod(index, per_tile)
        if local == 0:
            by_feature.append(torch.full_like(tiles[0, :, :patch, :patch], float("nan")))
            continue
        r, c = divmod(local - 1, side)
        by_feature.append(tiles[tile, :, r * patch : (r + 1) * patch, c * patch : (c + 1) * patch])
    return by_feature[feature], by_feature


def _redness(pixels: torch.Tensor) -> float:
    """How red the reddest pixel of a normalised (3, h, w) patch is; NaN patches count as none."""
    if torch.isnan(pixels).any():
        return float("-inf")
    return float((pixels[0] - pixels[2]).max())


GEOMETRY_CASES = [
    ("llava", (90, 50), 7),
    ("llava", (50, 90), 9),
    ("llava", (56, 56), 0),
    ("mllama", (60, 28), 8),
    ("mllama", (28, 60), 9),
    ("mllama", (28, 28), 4),
]


@pytest.mark.parametrize(("family", "size", "feature"), GEOMETRY_CASES)
def test_feature_box_covers_its_pixels(
    models: dict[str, LoadedModel], family: str, size: tuple[int, int], feature: int
) -> None:
    loaded = models[family]
    geometry = loaded.adapter.geometry(loaded.model, loaded.processor, size)
    assert geometry.kinds[feature] == "patch"
    x0, y0, x1, y1 = geometry.boxes[feature]
    cx, cy = (x0 + x1) / 2, (y0 + y1) / 2
    half_w, half_h = (x1 - x0) * 0.2, (y1 - y0) * 0.2
    image = Image.new("RGB", size, (20, 20, 200))
    ImageDraw.Draw(image).rectangle([cx - half_w, cy - half_h, cx + half_w, cy + half_h], fill=(240, 10, 10))
    prepared = loaded.adapter.prepare(loaded.model, loaded.processor, image, QUESTION)
    _, patches = _feature_patch(loaded, prepared.inputs["pixel_values"], feature)
    reddest = int(np.argmax([_redness(p) for p in patches]))
    assert reddest == feature, f"the painted block reached feature {reddest}, its box says {feature}"

    one_hot = np.zeros(geometry.num_features)
    one_hot[feature] = 1.0
    raster = feature_raster(one_hot, geometry)
    assert raster.shape == (size[1], size[0])
    row, col = np.unravel_index(np.nanargmax(raster), raster.shape)
    assert x0 <= col + 0.5 <= x1 and y0 <= row + 0.5 <= y1
    assert np.nansum(raster) == pytest.approx(np.sum(raster == 1.0))
    assert np.nanmax(raster[int(cy), :]) == 1.0 and raster[int(cy), int(cx)] == 1.0
    canvas = grid_canvas(one_hot, geometry)
    assert np.nansum(canvas) == 1.0


def test_two_tile_mllama_grid_places_tiles_side_by_side(models: dict[str, LoadedModel]) -> None:
    loaded = models["mllama"]
    wide = loaded.adapter.geometry(loaded.model, loaded.processor, (60, 28))
    tall = loaded.adapter.geometry(loaded.model, loaded.processor, (28, 60))
    values = np.arange(wide.num_features, dtype=float)
    assert grid_canvas(values, wide).tolist() == [[1, 2, 6, 7], [3, 4, 8, 9]]
    assert grid_canvas(values, tall).tolist() == [[1, 2], [3, 4], [6, 7], [8, 9]]


def test_recorder_flushes_in_batches_without_reordering() -> None:
    generator = torch.Generator().manual_seed(0)
    calls = [(layer, torch.rand(2, 3, 5, generator=generator)) for _ in range(7) for layer in (4, 1)]
    batched, single = CaptureRecorder(frozenset({1, 4}), flush_every=3), CaptureRecorder(frozenset({1, 4}))
    for layer, weights in calls:
        batched.record(layer, weights)
        single.record(layer, weights)
    assert len(batched._pending) == 14 % 3
    stacked = batched.stacked()
    assert stacked.shape == (7, 2, 2, 3, 5)
    assert torch.equal(stacked, single.stacked())
    assert torch.equal(stacked[6, :, 1], calls[-2][1])
