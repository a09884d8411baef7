"""LLaVA-NeXT and LLaVA-OneVision (`llava_next`, `llava_onevision`): inline anyres image features.

The processor expands the one `<image>` of the prompt into one token per image feature; the model
scatters the packed features onto those positions in order, so the image keys are the `<image>`
positions. Read in transformers 5.24 (`modeling_llava_next.py`, `processing_llava_next.py`,
`image_processing_pil_llava_next.py`) and checked against `get_image_features` by the tests.

Features, in sequence order (`LlavaNextModel.pack_image_features`)
    1. The base image: the whole image resized (aspect not kept) to one `image_size` tile, then
       `(image_size / patch)²` features row-major (the CLS is dropped: strategy "default").
    2. The high-resolution grid: `select_best_resolution` picks a canvas (height, width) from
       `image_grid_pinpoints`; the image is resized into it keeping its aspect
       (`get_patch_output_size`), centred with zero padding (`_get_padding_size`) and cut into
       `image_size` tiles. The tiles' features form one (canvas_h / patch) × (canvas_w / patch)
       grid; `unpad_image` drops whole rows (or columns) of padding from both ends, by the original
       size (height, width) the processor reports in `image_sizes`.
    3. After each kept row of that grid, one learned `image_newline` feature.

Newline features are image positions: they are keys that image pathways block and that capture
records. They cover no region of the image: their boxes are NaN and their kind is "padding" (the
feature kinds have no "newline" kind), so maps and pooling skip them. Features of the high-resolution
grid that lie entirely over the padding are "padding" too; the others are "patch".

LLaVA-OneVision (`llava_onevision`) packs the same way (`LlavaOnevisionModel.pack_image_features`),
then shrinks (bilinear) an unpadded grid of R' × C' cells to int(R' // r) × int(C' // r) when
r = sqrt(R'·C' / (N · (image_size / patch)²)) > 1.1 for `vision_aspect_ratio` "anyres_max_N"; a shrunk
feature gets the span of cells it is interpolated from. Its processor also holds a video processor,
which needs torchvision: without it the processor loads for images only.

`geometry().grids` holds the base grid only: the high-resolution grid is not one row-major block
(a newline follows every row); its features carry their boxes.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch
from transformers import LlavaOnevisionProcessor
from transformers.image_processing_utils import get_patch_output_size, select_best_resolution
from transformers.image_utils import ChannelDimension
from transformers.models.llava_next.modeling_llava_next import unpad_image
from transformers.models.llava_onevision.modeling_llava_onevision import (
    unpad_image as onevision_unpad_image,
)

from vistrace.adapters.base import (
    FeatureKind,
    Geometry,
    Grid,
    InlineAdapter,
    load_processor_with_image_only_fallback,
)

Box = tuple[float, float, float, float]


def anyres_canvas(image_processor: Any, image_size: tuple[int, int]) -> tuple[tuple[int, int], Box]:
    """The anyres canvas (height, width) px the image processor picks for an image of `image_size`
    (width, height), and where the resized image lies on it: (x0, y0, x1, y1) canvas px.

    From the processor's own `select_best_resolution`, `get_patch_output_size` and
    `_get_padding_size` (tuple pairs in the PIL variant, [left, top, right, bottom] in the
    torchvision one)."""
    width, height = image_size
    pinpoints = [list(p) for p in image_processor.image_grid_pinpoints]
    canvas_h, canvas_w = select_best_resolution((height, width), pinpoints)
    new_h, new_w = get_patch_output_size(
        np.zeros((1, height, width), dtype=np.uint8), (canvas_h, canvas_w), ChannelDimension.FIRST
    )
    padding = image_processor._get_padding_size((new_h, new_w), (canvas_h, canvas_w))
    if isinstance(padding[0], (tuple, list)):
        top, left = int(padding[0][0]), int(padding[1][0])
    else:
        left, top = int(padding[0]), int(padding[1])
    return (int(canvas_h), int(canvas_w)), (float(left), float(top), float(left + new_w), float(top + new_h))


def kept_grid_cells(
    rows: int,
    cols: int,
    image_size: tuple[int, int],
    unpad: Callable[[torch.Tensor, torch.Tensor], torch.Tensor] = unpad_image,
) -> tuple[np.ndarray, np.ndarray]:
    """Row and column indices (R', C') of the high-resolution feature grid (`rows` × `cols`) that
    the model's own `unpad` (its modeling module's `unpad_image`) keeps for an original image of
    `image_size` (width, height)."""
    width, height = image_size
    index = torch.arange(rows * cols).view(1, rows, cols)
    kept = unpad(index, torch.tensor([height, width]))[0].numpy()
    return kept // cols, kept % cols


class LlavaNextAdapter(InlineAdapter):
    """LLaVA-NeXT: base tile + unpadded anyres grid + one newline per grid row, all inline."""

    model_type = "llava_next"
    _unpad = staticmethod(unpad_image)

    def structure_error(self, config: Any) -> str | None:
        """The packing assumes the CLS is dropped (`vision_feature_select_strategy` "default")."""
        strategy = getattr(config, "vision_feature_select_strategy", "default")
        if strategy != "default":
            return (
                f"{self.model_type}: vision_feature_select_strategy {strategy!r} is not supported "
                "(the anyres packing needs 'default', the CLS dropped)"
            )
        return None

    def geometry(self, model: Any, processor: Any, image_size: tuple[int, int]) -> Geometry:
        """Geometry of the features of one image of `image_size` (width, height), in sequence order:
        base tile, then each kept row of the high-resolution grid followed by its newline (NaN box,
        kind "padding"). Boxes (N, 4) are original-image px."""
        width, height = image_size
        image_processor = processor.image_processor
        vision = model.config.vision_config
        tile, patch = int(vision.image_size), int(vision.patch_size)
        side = tile // patch
        model_pinpoints = [list(p) for p in model.config.image_grid_pinpoints]
        if model_pinpoints != [list(p) for p in image_processor.image_grid_pinpoints]:
            raise ValueError(
                f"{self.model_type} geometry: the image processor's image_grid_pinpoints differ from "
                "the model's; features would not match the processor's tiles"
            )
        base_size, crop = _base_tile(image_processor)
        if base_size != (tile, tile) or crop != (tile, tile):
            raise ValueError(
                f"{self.model_type} geometry: the image processor makes {base_size} tiles cropped to "
                f"{crop}, the vision tower expects {tile}×{tile}"
            )

        boxes: list[Box | None] = []
        kinds: list[FeatureKind] = []
        for r in range(side):
            for c in range(side):
                boxes.append(
                    (c * width / side, r * height / side, (c + 1) * width / side, (r + 1) * height / side)
                )
                kinds.append("patch")

        (canvas_h, canvas_w), placed = anyres_canvas(image_processor, image_size)
        scale_x = (placed[2] - placed[0]) / width
        scale_y = (placed[3] - placed[1]) / height
        rows, cols = (canvas_h // tile) * side, (canvas_w // tile) * side
        for row in self.packed_rows(model, rows, cols, image_size):
            for cx0, cy0, cx1, cy1 in row:
                x0 = max((cx0 * patch - placed[0]) / scale_x, 0.0)
                y0 = max((cy0 * patch - placed[1]) / scale_y, 0.0)
                x1 = min((cx1 * patch - placed[0]) / scale_x, float(width))
                y1 = min((cy1 * patch - placed[1]) / scale_y, float(height))
                inside = x1 > x0 and y1 > y0
                boxes.append((x0, y0, x1, y1) if inside else None)
                kinds.append("patch" if inside else "padding")
            # The row's learned newline feature: an image position with no region (no "newline" kind).
            boxes.append(None)
            kinds.append("padding")

        array = np.array([(np.nan,) * 4 if box is None else box for box in boxes], dtype=float)
        base_grid = Grid(0, side, side, (0.0, 0.0, float(width), float(height)))
        return Geometry(array, tuple(kinds), (base_grid,), (width, height))

    def packed_rows(self, model: Any, rows: int, cols: int, image_size: tuple[int, int]) -> list[list[Box]]:
        """The high-resolution features in sequence order, one list per packed row (each followed by
        a newline feature): their cells (x0, y0, x1, y1) in feature-grid units of the `rows` × `cols`
        grid, for an original image of `image_size` (width, height). LLaVA-NeXT: the cells that
        `unpad_image` keeps."""
        kept_rows, kept_cols = kept_grid_cells(rows, cols, image_size, self._unpad)
        return [
            [(float(c), float(r), float(c + 1), float(r + 1)) for r, c in zip(row_r, row_c, strict=True)]
            for row_r, row_c in zip(kept_rows, kept_cols, strict=True)
        ]

    def newline_features(self, model: Any, processor: Any, image_size: tuple[int, int]) -> np.ndarray:
        """(R',) indices, among the image features of `image_size`, of the learned newline features."""
        vision = model.config.vision_config
        tile, side = int(vision.image_size), int(vision.image_size) // int(vision.patch_size)
        (canvas_h, canvas_w), _ = anyres_canvas(processor.image_processor, image_size)
        packed = self.packed_rows(model, (canvas_h // tile) * side, (canvas_w // tile) * side, image_size)
        ends = np.cumsum([len(row) + 1 for row in packed])
        return side * side + ends - 1


class LlavaOnevisionAdapter(LlavaNextAdapter):
    """LLaVA-OneVision: LLaVA-NeXT's packing, with the unpadded grid shrunk (bilinear) when it holds
    more than `anyres_max_N` tiles' worth of features, and a processor with a video processor."""

    model_type = "llava_onevision"
    _unpad = staticmethod(onevision_unpad_image)

    def structure_error(self, config: Any) -> str | None:
        # Both strategies pack: "full" with SigLIP (no CLS), "default" with a CLS tower.
        return None

    def load_processor(self, path: str | Path) -> Any:
        """`AutoProcessor` where torchvision is installed; else `LlavaOnevisionProcessor` for images
        only (its video processor needs torchvision)."""
        return load_processor_with_image_only_fallback(path, LlavaOnevisionProcessor)

    def packed_rows(self, model: Any, rows: int, cols: int, image_size: tuple[int, int]) -> list[list[Box]]:
        """As LLaVA-NeXT, then, as `LlavaOnevisionModel.pack_image_features` does when the kept
        R' × C' cells exceed `max_num_patches` tiles by a ratio r > 1.1, the grid is resized
        (bilinear) to int(R' // r) × int(C' // r): output cell (i, j) is given the span of kept cells
        it is interpolated from, rows R'·i/h' … R'·(i+1)/h' (likewise columns)."""
        kept = super().packed_rows(model, rows, cols, image_size)
        vision = model.config.vision_config
        side = int(vision.image_size) // int(vision.patch_size)
        max_num_patches = int(str(model.config.vision_aspect_ratio).removeprefix("anyres_max_"))
        kept_h, kept_w = len(kept), len(kept[0])
        ratio = math.sqrt(kept_h * kept_w / (max_num_patches * side**2))
        if ratio <= 1.1:
            return kept
        out_h, out_w = int(kept_h // ratio), int(kept_w // ratio)
        x_start, y_start = kept[0][0][0], kept[0][0][1]
        step_y, step_x = kept_h / out_h, kept_w / out_w
        return [
            [
                (
                    x_start + j * step_x,
                    y_start + i * step_y,
                    x_start + (j + 1) * step_x,
                    y_start + (i + 1) * step_y,
                )
                for j in range(out_w)
            ]
            for i in range(out_h)
        ]


def _base_tile(image_processor: Any) -> tuple[tuple[int, int], tuple[int, int]]:
    """(height, width) the base image is resized to, and the (height, width) of the crop."""
    size = image_processor.size
    if size.get("height") and size.get("width"):
        base = (int(size["height"]), int(size["width"]))
    else:
        base = (int(size["shortest_edge"]), int(size["shortest_edge"]))
    crop = base
    if getattr(image_processor, "do_center_crop", False):
        crop_size = image_processor.crop_size
        crop = (int(crop_size["height"]), int(crop_size["width"]))
    return base, crop


LLAVA_NEXT_ADAPTERS: tuple[LlavaNextAdapter, ...] = (LlavaNextAdapter(), LlavaOnevisionAdapter())

__all__ = [
    "LLAVA_NEXT_ADAPTERS",
    "LlavaNextAdapter",
    "LlavaOnevisionAdapter",
    "anyres_canvas",
    "kept_grid_cells",
]
