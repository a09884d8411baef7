"""Gemma 3 (`gemma3`, `Gemma3ForConditionalGeneration`): inline soft tokens attending both ways.

Read in transformers 5.24 and 5.18 (`processing_gemma3.py`, `image_processing_pil_gemma3.py`,
`modeling_gemma3.py`); the tiny checkpoint is `vistrace.models.tiny_gemma3`.

Prompt
    The chat template writes `<start_of_image>` (the *boi* token) per image. The processor replaces
    it by `\\n\\n<start_of_image>` + `image_seq_length` × `<image_soft_token>` + `<end_of_image>\\n\\n`
    (`Gemma3Processor.full_image_sequence`); with pan-and-scan crops by "Here is the original image "
    + that + " and here are some crops to help you see better " + one such sequence per crop, joined
    by spaces. The model scatters one feature onto each `<image_soft_token>` (`config.image_token_id`;
    note `processor.image_token_id` is the *boi* id, the placeholder). The newlines merge with the
    template's own newlines when tokenised, so roles are resolved on the expanded text
    (`prepare_expanded`); boi, eoi, newlines and the crop sentences are template.

Features and geometry
    The image (and each crop) is resized — stretched, no aspect kept — to `size` (896² px in the
    released models); SigLIP cuts it into (S / patch)² patches, and the projector average-pools them
    `kernel = (S / patch) / sqrt(mm_tokens_per_image)` at a time into a sqrt(n) × sqrt(n) grid,
    flattened row-major (feature j at row j // side, column j % side). Pan-and-scan (off unless
    `do_pan_and_scan=True` is passed to the processor call; the processor's own defaults override the
    image processor's saved pan-and-scan settings): the original image first, then num_crops_h ×
    num_crops_w crops row-major, crop (r, c) = [c·cw, min((c+1)·cw, W)] × [r·ch, min((r+1)·ch, H)]
    with cw = ceil(W / num_crops_w), ch = ceil(H / num_crops_h), each stretched to S².

Attention
    `token_type_ids` (the processor's `mm_token_type_ids`, 1 on soft tokens only) makes each run of
    soft tokens one block that attends both ways (`create_masks_for_vision_model`): global layers get
    causal OR block, sliding layers (causal OR block) AND kv > q - sliding_window; blocks of
    different images/crops stay causal between them. With the seam's `eager_mask` registered the
    attention function receives exactly that as a (B, 1, Q, K) additive float mask, window included;
    `sliding_window` also arrives as a keyword (sdpa ignores it). Without `token_type_ids` the model
    silently falls back to a causal mask, so `token_type_ids` is a per-token input extended with 0.
    Scaling is `query_pre_attn_scalar ** -0.5` (passed as `scaling`). `attn_logit_softcapping` is
    never passed (`softcap` does not reach the attention function), and
    `Gemma3ForConditionalGeneration` does not apply `final_logit_softcapping` (only the text-only
    `Gemma3ForCausalLM` does): logits are `lm_head(norm(h))`, as `compat.finisher` computes them.

Caches
    `DynamicCache(config=...)` (what `use_cache=True` and `generate` build) keeps only the last
    `sliding_window - 1` keys of a sliding layer. A clean pass for the fast re-run, and a captured
    generation that gathers image keys by absolute position, need a config-less `DynamicCache()`
    passed explicitly (same numbers; every layer then keeps every key): the knockout's clean pass and
    the capture's generation pass one, and `compat.cache_tensors` refuses a cache whose keys fall
    short of the sequence.

Fast knockout
    The fast re-run assumes no row before its first re-run row attends to a later row. Gemma 3's
    image block breaks that only when the first row lies strictly inside a block, which vistrace's
    roles never produce (a text source changes every row of a block alike, so the first changed row
    is the block's first; an image source changes the block's first row, which sees itself).
    `rerun_start_error` checks it at every step and the sweep refuses (use strategy naive) if not.
    Paper mode caveat: a row whose window holds only `src` keys is treated as attending to later
    positions by roles only, not by the window; unreachable when the window (1024 in the released
    models) is longer than an image block plus the template before it.

Pan-and-scan
    `prepare` never asks for crops (the processor's own default is off), so a prompt holds one block
    per image. `geometry(..., do_pan_and_scan=True, pan_and_scan_*=...)` maps the crops of a call that
    did ask for them: the whole image first, then each crop, each its own sqrt(n) × sqrt(n) grid.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Mapping
from typing import Any, ClassVar

import torch
from PIL import Image

from vistrace.adapters.base import (
    Frame,
    Geometry,
    InlineAdapter,
    PreparedPrompt,
    frames_geometry,
    prepare_expanded,
)

# Gemma3Processor's own pan-and-scan defaults (processing_gemma3.py `images_kwargs`), which win over
# the image processor's saved settings.
PAN_AND_SCAN_DEFAULTS: Mapping[str, Any] = {
    "pan_and_scan_min_crop_size": 256,
    "pan_and_scan_max_num_crops": 4,
    "pan_and_scan_min_ratio_to_activate": 1.2,
}


def pan_and_scan_crops(
    image_size: tuple[int, int],
    *,
    pan_and_scan_min_crop_size: int,
    pan_and_scan_max_num_crops: int,
    pan_and_scan_min_ratio_to_activate: float,
) -> list[Frame]:
    """Crop boxes (x0, y0, x1, y1) in original pixels that `Gemma3ImageProcessor.pan_and_scan` cuts
    from an image of `image_size` (width, height), in its order (row-major); [] for none.
    Mirrors image_processing_pil_gemma3.py `pan_and_scan` (checked against it in knockout_check.py)."""
    width, height = image_size
    if width >= height:
        if width / height < pan_and_scan_min_ratio_to_activate:
            return []
        cols = min(math.floor(width / pan_and_scan_min_crop_size), math.floor(width / height + 0.5))
        cols = min(pan_and_scan_max_num_crops, max(2, cols))
        rows = 1
    else:
        if height / width < pan_and_scan_min_ratio_to_activate:
            return []
        rows = min(math.floor(height / pan_and_scan_min_crop_size), math.floor(height / width + 0.5))
        rows = min(pan_and_scan_max_num_crops, max(2, rows))
        cols = 1
    crop_w, crop_h = math.ceil(width / cols), math.ceil(height / rows)
    if min(crop_w, crop_h) < pan_and_scan_min_crop_size:
        return []
    return [
        (float(x), float(y), float(min(x + crop_w, width)), float(min(y + crop_h, height)))
        for y, x in itertools.product([crop_h * r for r in range(rows)], [crop_w * c for c in range(cols)])
    ]


def image_blocks(token_type_ids: torch.Tensor) -> list[tuple[int, int]]:
    """[start, end) of every run of image tokens in `token_type_ids` (S,): the blocks that attend
    both ways (transformers' `get_block_sequence_ids_for_mask`)."""
    flags = (token_type_ids == 1).tolist()
    blocks: list[tuple[int, int]] = []
    for index, flag in enumerate(flags):
        if flag and (index == 0 or not flags[index - 1]):
            blocks.append((index, index + 1))
        elif flag:
            blocks[-1] = (blocks[-1][0], index + 1)
    return blocks


def rerun_from_row_is_exact(token_type_ids: torch.Tensor, first_row: int) -> bool:
    """Whether re-running rows `first_row` … end on top of the clean rows before it is exact: no row
    before `first_row` may attend to a row from `first_row` on, i.e. `first_row` is not strictly inside
    an image block (the fast re-run's one assumption that bidirectional blocks can break)."""
    return all(not (start < first_row < end) for start, end in image_blocks(token_type_ids))


class Gemma3Adapter(InlineAdapter):
    """Gemma 3: per image (and crop) `mm_tokens_per_image` inline soft tokens attending both ways.

    `InlineAdapter.image_token_id` is `config.image_token_id`, the soft token (not
    `processor.image_token_id`, the <start_of_image> placeholder)."""

    model_type = "gemma3"
    # Not causal inside an image block, but the fast re-run stays exact as long as its first row never
    # falls strictly inside one: `rerun_start_error` checks every step (see the module docstring).
    text_attention_causal: ClassVar[bool] = True
    per_token_inputs: ClassVar[Mapping[str, Any]] = {"token_type_ids": 0}

    def structure_error(self, config: Any) -> str | None:
        text = config.text_config
        if getattr(text, "use_bidirectional_attention", False):
            return "gemma3: use_bidirectional_attention is set (an encoder, not a generative checkpoint)"
        side = math.isqrt(int(config.mm_tokens_per_image))
        patches = int(config.vision_config.image_size) // int(config.vision_config.patch_size)
        if side * side != int(config.mm_tokens_per_image) or patches % side:
            return (
                f"gemma3: mm_tokens_per_image {config.mm_tokens_per_image} is not a square grid that pools "
                f"{patches}×{patches} patches evenly"
            )
        return None

    def prepare(self, model: Any, processor: Any, image: Image.Image, question: str) -> PreparedPrompt:
        """As `Adapter.prepare`, roles resolved on the text the processor tokenised. The template
        trims the text (`| trim`), so the question is stripped first to keep its span exact."""
        prepared = prepare_expanded(self, model, processor, image, question.strip())
        if "token_type_ids" not in prepared.inputs:
            raise ValueError(
                "gemma3: the processor returned no token_type_ids; without them the model gives the image "
                "block a causal mask (use Gemma3Processor)"
            )
        return prepared

    def rerun_start_error(self, inputs: Mapping[str, torch.Tensor], row: int) -> str | None:
        if "token_type_ids" not in inputs or rerun_from_row_is_exact(inputs["token_type_ids"][0], row):
            return None
        return f"gemma3: a re-run from row {row} would start inside an image block that attends both ways"

    def geometry(
        self, model: Any, processor: Any, image_size: tuple[int, int], **pan_and_scan: Any
    ) -> Geometry:
        """Geometry of one image of `image_size` (width, height): the whole image, stretched to the
        vision tower's square, as a sqrt(n) × sqrt(n) pooled grid; with `do_pan_and_scan=True` (and
        optionally the `pan_and_scan_*` settings passed to the processor call) its crops follow."""
        side = math.isqrt(int(model.config.mm_tokens_per_image))
        size = processor.image_processor.size
        if (
            int(size["height"]) != int(model.config.vision_config.image_size)
            or size["height"] != size["width"]
        ):
            raise ValueError(f"Gemma 3 geometry: image processor size {dict(size)} is not the tower's square")
        width, height = image_size
        frames: list[Frame] = [(0.0, 0.0, float(width), float(height))]
        if pan_and_scan.pop("do_pan_and_scan", False):
            settings = {**PAN_AND_SCAN_DEFAULTS, **pan_and_scan}
            frames += pan_and_scan_crops(image_size, **settings)
        return frames_geometry(frames, side, image_size)


GEMMA3_ADAPTER = Gemma3Adapter()

__all__ = [
    "GEMMA3_ADAPTER",
    "Gemma3Adapter",
    "image_blocks",
    "pan_and_scan_crops",
    "rerun_from_row_is_exact",
]
