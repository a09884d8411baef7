"""Qwen2-VL, Qwen2.5-VL and Qwen3-VL (`qwen2_vl`, `qwen2_5_vl`, `qwen3_vl`): inline image features.

The prompt holds `<|vision_start|>`, a run of `<|image_pad|>` tokens and `<|vision_end|>`; the model
scatters one merged vision feature onto each `<|image_pad|>` position, so the image keys are those
positions. The numbers below were read in transformers 5.24 (`modeling_qwen2_vl.py`,
`modeling_qwen2_5_vl.py`, `modeling_qwen3_vl.py`) and are checked by `tests/test_qwen_groundwork.py`.

Features and geometry
    The image processor resizes the whole image (no crop, no padding) with its module's
    `smart_resize` to a size divisible by `patch_size × merge_size` (28 px for Qwen2/2.5-VL, 32 px for
    Qwen3-VL) within `[min_pixels, max_pixels]` (`size["shortest_edge"]`, `size["longest_edge"]`),
    cuts it into `patch_size` patches and orders them so that every `merge_size × merge_size` block
    is contiguous; the vision tower's merger turns each block into one feature. `image_grid_thw` =
    (1, H/patch, W/patch); an image gives `prod(image_grid_thw) // merge_size²` features, row-major
    over the merged grid (feature j at merged row j // cols, column j % cols: the height and width
    M-RoPE streams of `get_rope_index` give the same row and column, offset by the image's start).
    Qwen2.5-VL's window attention permutes patches inside the ViT and restores the order at its end.

Per-token inputs
    The processor returns `input_ids`, `attention_mask`, `mm_token_type_ids` (B, S) int (0 text,
    1 image, 2 video), `pixel_values` (patches, 3·2·patch²) and `image_grid_thw` (images, 3). A
    forward with `image_grid_thw` and no `mm_token_type_ids` raises; a sequence extended with
    answer tokens must extend `mm_token_type_ids` with zeros (`extend_inputs`), else `get_rope_index`
    fails to assign (3, P) positions into a (3, P + n) tensor.

Positions (M-RoPE)
    `get_rope_index` gives (3, B, S) position ids (temporal, height, width). Text tokens share one
    value on all three streams and count up by one; an image starting at p gets t = p, h = p + row,
    w = p + column; text after the image resumes at max + 1 = p + max(rows, cols). The model keeps
    `rope_deltas` = max + 1 - S (B, 1) on `model.model`; with a cache it places new tokens at
    `cache_length + i + rope_deltas`, which equals what `get_rope_index` gives the same tokens over
    the whole sequence, so a teacher-forced sequence extended with answer tokens gets correct
    positions by running the model over it with `mm_token_type_ids` extended with zeros (text).
    `generate` passes (4, B, S) position ids: row 0 the 1-D text positions (used for the mask), rows
    1-3 the M-RoPE streams. The text model turns (3, B, S) into `position_embeddings` (cos, sin),
    each (B, S, head_dim), before the decoder layers.

Decoder-layer arguments (a forward pre-hook on the layers)
    Plain forward: `hidden_states` (positional), `attention_mask` (the seam's 4-d additive mask, or
    None with sdpa and no padding), `position_embeddings` (cos, sin) each (B, S, head_dim),
    `position_ids` = None, `cache` (the `DynamicCache` or None), `use_cache` (Qwen2/2.5-VL only).
    Under `generate` `position_ids` is the (B, S) text row. These are the names and layouts of
    Llama's decoder layers (cache argument `cache`, positions as (cos, sin) sliced on dim 1).

Causality, norm, head
    Text attention is causal everywhere (`create_causal_mask`, `is_causal = True`; no bidirectional
    image block). Qwen2/2.5-VL layers may be `sliding_attention` only when `use_sliding_window` is
    set (off in the released checkpoints). Logits are `lm_head(language_model.norm(h))`, no
    post-processing; `get_decoder()` is `model.model.language_model`.

Qwen3-VL DeepStack
    The vision tower also returns one feature set per `deepstack_visual_indexes` entry (3 in the
    released models); after decoder layer i < len(deepstack_visual_indexes) the text model adds set
    i to the hidden states of the image rows (`Qwen3VLTextModel._deepstack_process`), outside any
    attention call. An image pathway knockout blocks attention to the image keys; it does not block
    these additions, so image rows carry fresh vision features into layers 1-3 whatever is blocked.
    A re-run that drives decoder layers itself must add them too when it re-runs image rows below
    layer len(deepstack_visual_indexes) (`deepstack_layers`).

Processor without torchvision
    `Qwen2VLProcessor`, `Qwen2_5_VLProcessor` and `Qwen3VLProcessor` take a video processor, and every
    Qwen video processor requires torchvision: without it `AutoProcessor.from_pretrained` fails
    (the video processor class resolves to None) and the processor's constructor rejects
    `video_processor=None`. The image processor has a PIL variant (`Qwen2VLImageProcessorPil`, used
    for all three families) that `AutoImageProcessor` picks when torchvision is missing.
    `load_qwen_processor` uses `AutoProcessor` where torchvision imports, and the family's own
    processor class restricted to image processor + tokenizer where it does not (images only).
"""

from __future__ import annotations

import json
import logging
import sys
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import torch
from transformers import Qwen2_5_VLProcessor, Qwen2VLProcessor, Qwen3VLProcessor
from transformers.utils import is_torchvision_available

from vistrace.adapters.base import FeatureKind, Geometry, Grid, InlineAdapter, image_only_processor_class

logger = logging.getLogger(__name__)

QWEN_PROCESSOR_CLASSES: dict[str, type[Any]] = {
    "qwen2_vl": Qwen2VLProcessor,
    "qwen2_5_vl": Qwen2_5_VLProcessor,
    "qwen3_vl": Qwen3VLProcessor,
}


def load_qwen_processor(path: str | Path) -> Any:
    """The processor of the Qwen-VL checkpoint at `path`: `AutoProcessor` where torchvision is
    installed, else the checkpoint's processor class for images only (logged in one line)."""
    from transformers import AutoProcessor

    if is_torchvision_available():
        return AutoProcessor.from_pretrained(path)
    directory = Path(path)
    name = _processor_class_name(directory)
    classes = {cls.__name__: cls for cls in QWEN_PROCESSOR_CLASSES.values()}
    if name not in classes:
        raise ValueError(
            f"{directory}: processor class {name!r} is not a Qwen-VL processor ({', '.join(classes)})"
        )
    logger.warning(
        "torchvision is not installed: %s loaded for images only (video inputs need torchvision)", name
    )
    return image_only_processor_class(classes[name]).from_pretrained(directory)


def _processor_class_name(directory: Path) -> str:
    for file_name in ("processor_config.json", "preprocessor_config.json", "tokenizer_config.json"):
        file = directory / file_name
        if file.is_file():
            name = json.loads(file.read_text()).get("processor_class")
            if name:
                return str(name)
    config = json.loads((directory / "config.json").read_text())
    return str(QWEN_PROCESSOR_CLASSES[str(config["model_type"])].__name__)


# ----- geometry ---------------------------------------------------------------------------------


def resize_function(image_processor: Any) -> Callable[..., tuple[int, int]]:
    """The `smart_resize(height, width, factor, min_pixels, max_pixels)` of the image processor's own
    module (PIL or torchvision variant), the function its `resize` calls."""
    function = getattr(sys.modules[type(image_processor).__module__], "smart_resize", None)
    if not callable(function):
        raise TypeError(
            f"{type(image_processor).__name__}'s module has no smart_resize; not a Qwen-VL processor"
        )
    return function


def resized_size(image_processor: Any, image_size: tuple[int, int]) -> tuple[int, int]:
    """(height, width) in pixels that the image processor resizes an image of `image_size`
    (width, height) to, from its own `smart_resize`, `patch_size`, `merge_size` and `size` bounds."""
    width, height = image_size
    factor = int(image_processor.patch_size) * int(image_processor.merge_size)
    size = image_processor.size
    min_pixels = size["shortest_edge"] if "shortest_edge" in size else size["min_pixels"]
    max_pixels = size["longest_edge"] if "longest_edge" in size else size["max_pixels"]
    new_h, new_w = resize_function(image_processor)(
        height, width, factor=factor, min_pixels=int(min_pixels), max_pixels=int(max_pixels)
    )
    return int(new_h), int(new_w)


def grid_geometry(
    grid_thw: tuple[int, int, int],
    patch_size: int,
    merge_size: int,
    image_size: tuple[int, int],
) -> Geometry:
    """Geometry of one image's features from its `image_grid_thw` row (t, h, w in patches).

    The resized canvas is (h·patch, w·patch) px and covers the whole original image of `image_size`
    (width, height); feature j covers merged cell (j // cols, j % cols) of `merge·patch` px, mapped
    back by the per-axis scale. Boxes (N, 4) are in original-image pixels; t > 1 (video) repeats the
    grid per temporal patch."""
    t, h, w = (int(v) for v in grid_thw)
    if h % merge_size or w % merge_size:
        raise ValueError(f"image_grid_thw {grid_thw} is not divisible by merge_size {merge_size}")
    width, height = image_size
    rows, cols = h // merge_size, w // merge_size
    cell = patch_size * merge_size
    scale_x, scale_y = (w * patch_size) / width, (h * patch_size) / height
    r, c = np.divmod(np.arange(rows * cols), cols)
    one = np.stack(
        [c * cell / scale_x, r * cell / scale_y, (c + 1) * cell / scale_x, (r + 1) * cell / scale_y], 1
    )
    boxes = np.tile(np.minimum(one, [width, height, width, height]), (t, 1)).astype(float)
    patch_kind: FeatureKind = "patch"
    kinds = (patch_kind,) * (t * rows * cols)
    grids = tuple(
        Grid(i * rows * cols, rows, cols, (0.0, 0.0, float(width), float(height))) for i in range(t)
    )
    return Geometry(boxes, kinds, grids, (width, height))


# ----- the adapter ------------------------------------------------------------------------------


class Qwen2VLAdapter(InlineAdapter):
    """Qwen2-VL: one image = prod(image_grid_thw) / merge² inline `<|image_pad|>` positions."""

    model_type = "qwen2_vl"
    # Answer tokens are text (0); positions are then recomputed by the model (`get_rope_index`).
    per_token_inputs: ClassVar[Mapping[str, Any]] = {"mm_token_type_ids": 0}

    def load_processor(self, path: str | Path) -> Any:
        return load_qwen_processor(path)

    def geometry(self, model: Any, processor: Any, image_size: tuple[int, int]) -> Geometry:
        """Geometry of one image of `image_size` (width, height): its grid from the processor's own
        `smart_resize` (the grid its `image_grid_thw` reports)."""
        image_processor = processor.image_processor
        patch = int(image_processor.patch_size)
        height, width = resized_size(image_processor, image_size)
        return grid_geometry(
            (1, height // patch, width // patch), patch, int(image_processor.merge_size), image_size
        )

    def geometry_from_inputs(
        self, processor: Any, inputs: Mapping[str, torch.Tensor], image_size: tuple[int, int]
    ) -> Geometry:
        """Geometry of the (single) image of processor output `inputs`, from its `image_grid_thw`;
        raises if that grid is not the one the processor's resize gives `image_size`."""
        grid = inputs["image_grid_thw"]
        if grid.shape[0] != 1:
            raise ValueError(f"expected one image, the processor output has {grid.shape[0]}")
        image_processor = processor.image_processor
        thw = tuple(int(v) for v in grid[0].tolist())
        patch = int(image_processor.patch_size)
        height, width = resized_size(image_processor, image_size)
        if thw[1:] != (height // patch, width // patch):
            raise ValueError(
                f"image_grid_thw {thw} does not match the processor's resize of {image_size} "
                f"to {width}×{height}"
            )
        return grid_geometry((thw[0], thw[1], thw[2]), patch, int(image_processor.merge_size), image_size)

    def position_ids(self, model: Any, inputs: Mapping[str, torch.Tensor]) -> torch.Tensor:
        """(3, B, S) M-RoPE position ids (temporal, height, width) the model gives `inputs`."""
        positions, _ = model.model.get_rope_index(
            inputs["input_ids"],
            mm_token_type_ids=inputs["mm_token_type_ids"],
            image_grid_thw=inputs.get("image_grid_thw"),
            attention_mask=inputs.get("attention_mask"),
        )
        return positions

    def deepstack_layers(self, model: Any) -> tuple[int, ...]:
        """Decoder layers after which vision features are added to the image rows outside attention."""
        return ()


class Qwen2_5_VLAdapter(Qwen2VLAdapter):
    """Qwen2.5-VL: as Qwen2-VL for the language model; its ViT's window attention keeps feature order."""

    model_type = "qwen2_5_vl"


class Qwen3VLAdapter(Qwen2VLAdapter):
    """Qwen3-VL: 16-px patches (32×32 px per feature), interleaved M-RoPE, DeepStack additions."""

    model_type = "qwen3_vl"

    def deepstack_layers(self, model: Any) -> tuple[int, ...]:
        return tuple(range(len(model.config.vision_config.deepstack_visual_indexes)))

    def decoder_extras(self, decoder_arguments: Mapping[str, Any]) -> Any:
        """The image rows (1, S) bool and the DeepStack feature sets [(N, hidden)] the text model got."""
        embeds = decoder_arguments.get("deepstack_visual_embeds")
        mask = decoder_arguments.get("visual_pos_masks")
        return None if embeds is None or mask is None else (mask, list(embeds))

    def after_layer(
        self, layer: int, hidden: torch.Tensor, start: int, end: int, extras: Any
    ) -> torch.Tensor:
        """Add DeepStack feature set `layer` to the image rows among rows `start` … `end`-1, as
        `Qwen3VLTextModel._deepstack_process` does after decoder layer `layer`."""
        if extras is None:
            return hidden
        mask, embeds = extras
        if layer >= len(embeds):
            return hidden
        rows = mask[0, start:end].to(hidden.device)
        count = int(rows.sum())
        if count == 0:
            return hidden
        offset = int(mask[0, :start].sum())
        features = embeds[layer][offset : offset + count].to(hidden.device, hidden.dtype)
        hidden = hidden.clone()
        hidden[:, rows] = hidden[:, rows] + features
        return hidden


QWEN_ADAPTERS: tuple[Qwen2VLAdapter, ...] = (Qwen2VLAdapter(), Qwen2_5_VLAdapter(), Qwen3VLAdapter())

__all__ = [
    "QWEN_ADAPTERS",
    "QWEN_PROCESSOR_CLASSES",
    "Qwen2VLAdapter",
    "Qwen2_5_VLAdapter",
    "Qwen3VLAdapter",
    "grid_geometry",
    "load_qwen_processor",
    "resize_function",
    "resized_size",
]
