"""InternVL, `-hf` checkpoints (`internvl`): inline `<IMG_CONTEXT>` features inside `<img>` … `</img>`.

Read in transformers 5.24 (`processing_internvl.py`, `modeling_internvl.py`,
`got_ocr2/image_processing_pil_got_ocr2.py`).

Prompt
    The chat template writes one `<IMG_CONTEXT>` per image; the processor replaces it by
    `<img>` + tiles × `image_seq_length` × `<IMG_CONTEXT>` + `</img>`
    (`InternVLProcessor.replace_image_token`). The model scatters one feature onto each
    `<IMG_CONTEXT>` position, so the image keys are those positions; `<img>` and `</img>` are
    template. Roles are resolved on the expanded text the processor tokenised (`prepare_expanded`).

Tiles and geometry
    With `crop_to_patches` (the processor's default) the image processor picks a grid of cols × rows
    tiles with `get_optimal_tiled_canvas` (the aspect ratio closest to the image's among grids of
    `min_patches` … `max_patches` tiles), resizes the whole image to (cols·T, rows·T) (T = `size`,
    448 px in the released models) and cuts it row-major into T × T tiles; when there is more than
    one tile the whole image resized to T × T (the thumbnail) follows. One tile: only the image
    resized to T × T. The canvas covers the whole original image stretched per axis, so tile
    (r, c) is [c·W/cols, (c+1)·W/cols] × [r·H/rows, (r+1)·H/rows] of the original W × H.

Features per tile
    The vision tower gives (T / patch)² patch features (+ CLS, dropped by
    `vision_feature_select_strategy="default"`); `pixel_shuffle` with `downsample_ratio` 0.5 gathers
    2 × 2 patch blocks into one feature, row-major over the (T / patch / 2)² grid (256 features for
    448-px tiles and 14-px patches = `image_seq_length`). Features follow the tiles' order.

Language model
    Built from `text_config` (Qwen2 / Qwen2.5 / Qwen3 / Llama backbones in the released models):
    1-D positions, causal attention, logits `lm_head(norm(h))`. `pixel_values` (tiles, 3, T, T) is
    per image, not per token.

Remote code
    The original checkpoints (`model_type` `internvl_chat`, `InternVLChatModel`) need remote code;
    transformers and vistrace read the `-hf` conversion (`OpenGVLab/InternVL3-*-hf`).

Processor without torchvision
    `InternVLProcessor` takes a video processor, which requires torchvision; without it the
    processor is loaded for images only (`load_internvl_processor`).
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

from PIL import Image
from transformers import InternVLProcessor

from vistrace.adapters.base import (
    Geometry,
    InlineAdapter,
    PreparedPrompt,
    frames_geometry,
    grid_frames,
    load_processor_with_image_only_fallback,
    prepare_expanded,
)

REMOTE_CODE_MODEL_TYPES = frozenset({"internvl_chat"})


def load_internvl_processor(path: str | Path) -> Any:
    """The processor of the InternVL `-hf` checkpoint at `path`: `AutoProcessor` where torchvision is
    installed, else `InternVLProcessor` for images only (logged in one line)."""
    return load_processor_with_image_only_fallback(path, InternVLProcessor)


def canvas_function(image_processor: Any) -> Callable[..., tuple[int, int]]:
    """The `get_optimal_tiled_canvas(original (h, w), tile (h, w), min_tiles, max_tiles) -> (cols,
    rows)` of the image processor's own module (PIL or torchvision variant), the function its
    `crop_image_to_patches` calls."""
    function = getattr(sys.modules[type(image_processor).__module__], "get_optimal_tiled_canvas", None)
    if not callable(function):
        raise TypeError(
            f"{type(image_processor).__name__}'s module has no get_optimal_tiled_canvas; "
            "not an InternVL (GotOcr2) image processor"
        )
    return function


def tile_grid(processor: Any, image_size: tuple[int, int]) -> tuple[int, int, int]:
    """(rows, cols, tile side T) the processor gives an image of `image_size` (width, height): the
    tile count from the processor run on a blank image of that size, the grid from the image
    processor's own `get_optimal_tiled_canvas` (rows = cols = 1 for a single tile, no thumbnail)."""
    width, height = image_size
    image_processor = processor.image_processor
    size = image_processor.size
    tile_h, tile_w = int(size["height"]), int(size["width"])
    if tile_h != tile_w:
        raise ValueError(f"InternVL geometry: tiles of {tile_w}×{tile_h} px are not square")
    out = processor(images=[Image.new("RGB", (width, height))], text=[processor.image_token])
    tiles = len(out["pixel_values"])
    if tiles == 1:
        return 1, 1, tile_h
    cols, rows = canvas_function(image_processor)(
        (height, width), (tile_h, tile_w), int(image_processor.min_patches), int(image_processor.max_patches)
    )
    if cols * rows + 1 != tiles:
        raise ValueError(
            f"InternVL geometry: the processor gave {tiles} tiles, its canvas {cols}×{rows} tiles "
            "+ a thumbnail"
        )
    return int(rows), int(cols), tile_h


def tile_geometry(rows: int, cols: int, per_side: int, image_size: tuple[int, int]) -> Geometry:
    """Geometry of one image cut into `rows` × `cols` tiles (plus a thumbnail when more than one),
    each with `per_side`² features row-major. Boxes (N, 4) in original-image pixels of `image_size`
    (width, height): tiles row-major, then the thumbnail, which covers the whole image."""
    frames = grid_frames(rows, cols, image_size)
    if len(frames) > 1:
        frames.append((0.0, 0.0, float(image_size[0]), float(image_size[1])))
    return frames_geometry(frames, per_side, image_size)


def _side(value: Any) -> int:
    """One side of a vision-config size that may be an int or a (height, width) pair."""
    if isinstance(value, (list, tuple)):
        if value[0] != value[1]:
            raise ValueError(f"InternVL geometry: non-square size {value}")
        return int(value[0])
    return int(value)


class InternVLAdapter(InlineAdapter):
    """InternVL `-hf`: tiles × `image_seq_length` inline `<IMG_CONTEXT>` positions inside
    `<img>` … `</img>`."""

    model_type = "internvl"

    def structure_error(self, config: Any) -> str | None:
        """The original remote-code checkpoints are not what transformers reads."""
        model_type = str(getattr(config, "model_type", ""))
        architectures = getattr(config, "architectures", None) or []
        if model_type in REMOTE_CODE_MODEL_TYPES or "InternVLChatModel" in architectures:
            return (
                "this InternVL checkpoint needs remote code (InternVLChatModel); vistrace reads the "
                "transformers conversion, the '-hf' checkpoints (e.g. OpenGVLab/InternVL3-1B-hf)"
            )
        return None

    def load_processor(self, path: str | Path) -> Any:
        return load_internvl_processor(path)

    def prepare(self, model: Any, processor: Any, image: Image.Image, question: str) -> PreparedPrompt:
        """As `Adapter.prepare`, with `<img>` / `</img>` resolved as template (`prepare_expanded`)."""
        return prepare_expanded(self, model, processor, image, question)

    def geometry(self, model: Any, processor: Any, image_size: tuple[int, int]) -> Geometry:
        """Geometry of one image of `image_size` (width, height): the tile grid from the processor's
        own tiling, (T / patch · downsample_ratio)² features per tile."""
        rows, cols, tile = tile_grid(processor, image_size)
        vision = model.config.vision_config
        if _side(vision.image_size) != tile:
            raise ValueError(
                f"InternVL geometry: tiles of {tile} px but the vision tower takes {vision.image_size}"
            )
        per_side = int(tile // _side(vision.patch_size) * float(model.config.downsample_ratio))
        if per_side * per_side != int(model.config.image_seq_length):
            raise ValueError(
                f"InternVL geometry: {per_side}² features per tile, the config says "
                f"image_seq_length {model.config.image_seq_length}"
            )
        return tile_geometry(rows, cols, per_side, image_size)


INTERNVL_ADAPTER = InternVLAdapter()

__all__ = [
    "INTERNVL_ADAPTER",
    "REMOTE_CODE_MODEL_TYPES",
    "InternVLAdapter",
    "canvas_function",
    "load_internvl_processor",
    "tile_geometry",
    "tile_grid",
]
