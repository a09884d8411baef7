"""LLaVA (HF `llava`): image features occupy inline positions of the decoder sequence."""

from __future__ import annotations

from typing import Any

import numpy as np

from vistrace.adapters.base import FeatureKind, Geometry, Grid, InlineAdapter


class LlavaAdapter(InlineAdapter):
    """LLaVA-1.5 / Volcano: one image = (image_size / patch)² positions, every layer sees them."""

    model_type = "llava"

    def structure_error(self, config: Any) -> str | None:
        """Pixtral checkpoints also say `llava`, with image-break tokens and variable resolution."""
        vision_type = getattr(getattr(config, "vision_config", None), "model_type", None)
        if vision_type in (None, "clip_vision_model", "siglip_vision_model"):
            return None
        return (
            f"a 'llava' checkpoint with a {vision_type!r} vision tower (e.g. Pixtral) is not LLaVA-1.5: its "
            "image breaks and variable resolution are not supported; LLaVA-1.5-style CLIP/SigLIP towers are"
        )

    def geometry(self, model: Any, processor: Any, image_size: tuple[int, int]) -> Geometry:
        """Feature → its region of the original image, through the image processor's own steps:
        pad to a square in the mean colour (``do_pad``, on processors that pad: LLaVA's
        ``expand2square``), resize (``shortest_edge``, the long side truncated to an int as
        transformers does, or an exact ``height``×``width``), centre crop (``do_center_crop``).

        With ``vision_feature_select_strategy="full"`` (``mm_vision_select_feature: cls_patch``) the
        CLS feature comes first and has no region. Patches entirely over padding are ``padding``.
        """
        width, height = image_size
        ip = processor.image_processor
        patch = int(model.config.vision_config.patch_size)
        pad_x = pad_y = 0.0
        canvas_w, canvas_h = width, height
        if pads_to_square(ip):
            side = max(width, height)
            pad_x, pad_y = (side - width) // 2, (side - height) // 2
            canvas_w = canvas_h = side
        resized_w, resized_h = _resized_size(ip, canvas_w, canvas_h)
        scale_x, scale_y = resized_w / canvas_w, resized_h / canvas_h
        left = top = 0
        crop_w, crop_h = resized_w, resized_h
        if getattr(ip, "do_center_crop", False):
            crop_h, crop_w = _crop_size(ip)
            left, top = (resized_w - crop_w) // 2, (resized_h - crop_h) // 2
        rows, cols = crop_h // patch, crop_w // patch
        cls_first = model.config.vision_feature_select_strategy == "full"
        first = int(cls_first)
        boxes = np.full((first + rows * cols, 4), np.nan)
        kinds: list[FeatureKind] = ["cls"] if cls_first else []
        for r in range(rows):
            for c in range(cols):
                x0 = (c * patch + left) / scale_x - pad_x
                y0 = (r * patch + top) / scale_y - pad_y
                x1 = ((c + 1) * patch + left) / scale_x - pad_x
                y1 = ((r + 1) * patch + top) / scale_y - pad_y
                box = (max(x0, 0.0), max(y0, 0.0), min(x1, float(width)), min(y1, float(height)))
                if box[2] > box[0] and box[3] > box[1]:
                    boxes[first + r * cols + c] = box
                    kinds.append("patch")
                else:
                    kinds.append("padding")
        canvas_box = (
            left / scale_x - pad_x,
            top / scale_y - pad_y,
            (left + crop_w) / scale_x - pad_x,
            (top + crop_h) / scale_y - pad_y,
        )
        return Geometry(boxes, tuple(kinds), (Grid(first, rows, cols, canvas_box),), (width, height))


def pads_to_square(image_processor: Any) -> bool:
    """Whether the image processor pads images to a square before resizing: ``do_pad`` set on a
    processor that implements it (``LlavaImageProcessor``; a ``do_pad`` key on a
    ``CLIPImageProcessor`` is ignored by the processor, and so here)."""
    return bool(getattr(image_processor, "do_pad", False)) and hasattr(image_processor, "pad_to_square")


def _resized_size(image_processor: Any, width: int, height: int) -> tuple[int, int]:
    """(width, height) after the processor's resize, computed as transformers computes it."""
    if not getattr(image_processor, "do_resize", True):
        return width, height
    size = image_processor.size
    shortest, longest = size.get("shortest_edge"), size.get("longest_edge")
    if shortest and not longest:
        short, long = (width, height) if width <= height else (height, width)
        new_long = int(shortest * long / short)
        return (int(shortest), new_long) if width <= height else (new_long, int(shortest))
    if size.get("height") and size.get("width") and not longest:
        return int(size["width"]), int(size["height"])
    raise ValueError(
        f"LLaVA geometry: image processor size {dict(size)} is not supported; expected shortest_edge "
        "or height and width"
    )


def _crop_size(image_processor: Any) -> tuple[int, int]:
    """(height, width) of the centre crop."""
    crop = getattr(image_processor, "crop_size", None) or image_processor.size
    if crop.get("height") and crop.get("width"):
        return int(crop["height"]), int(crop["width"])
    return int(crop["shortest_edge"]), int(crop["shortest_edge"])
