"""Mllama (Llama-3.2-Vision): image features are the keys of dedicated cross-attention layers."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, ClassVar

import numpy as np
import torch
from torch.utils.hooks import RemovableHandle
from transformers.models.mllama.image_processing_pil_mllama import (
    get_image_size_fit_to_canvas,
    get_optimal_tiled_canvas,
)

from vistrace import compat
from vistrace.adapters import decoder
from vistrace.adapters.base import Adapter, FeatureKind, Geometry, Grid
from vistrace.adapters.mllama_vision import use_reference_vision_features, vision_convention_report
from vistrace.hook.plan import active_plan
from vistrace.hook.seam import blocked_entries


class MllamaAdapter(Adapter):
    """Keys of cross-attention layer l are tiles × (1 CLS + patches) vision tokens, padding tiles included."""

    model_type = "mllama"
    family = "cross"
    # A fed answer token sees the image as the last prompt token does (the research code's rule too).
    per_token_inputs: ClassVar[Mapping[str, Any]] = {"cross_attention_mask": decoder.repeat_last_row}
    row_arguments: ClassVar[Mapping[str, int]] = {
        **decoder.LLAMA_ROW_ARGUMENTS,
        "cross_attention_mask": 2,
        "full_text_row_masked_out_mask": 2,
    }
    cached_arguments = frozenset({"cross_attention_states"})

    def prepare_model(self, model: Any) -> None:
        """Pick the vision tower's intermediate features as the reference does (`mllama_vision`)."""
        use_reference_vision_features(model)

    def family_contracts(self, model: Any) -> list[compat.ContractStatus]:
        report = vision_convention_report(model)
        name = "Mllama vision features"
        if not report["matches_reference"]:
            detail = f"intermediate features follow {report['installed_convention']}, not restored"
            return [compat.ContractStatus(name, False, detail)]
        fixed = ", reference restored" if report["fix_needed"] else ""
        return [compat.ContractStatus(name, True, f"installed {report['installed_convention']}{fixed}")]

    def num_layers(self, model: Any) -> int:
        return int(model.config.text_config.num_hidden_layers)

    def cross_layers(self, model: Any) -> frozenset[int]:
        return frozenset(int(i) for i in model.config.text_config.cross_attention_layers)

    def image_token_id(self, model: Any) -> int:
        return int(model.config.image_token_id)

    def _image_rows_and_keys(
        self, inputs: dict[str, torch.Tensor], image_token: int
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        rows = inputs["cross_attention_mask"][0].flatten(1).bool().any(dim=1)
        return rows, None

    def geometry(self, model: Any, processor: Any, image_size: tuple[int, int]) -> Geometry:
        """Feature t·(P+1) is tile t's CLS, then its P patches row-major; tiles fill the canvas
        row-major; the resized image sits at the canvas' top-left, the rest is padding."""
        width, height = image_size
        ip = processor.image_processor
        tile = int(ip.size["height"])
        patch = int(model.config.vision_config.patch_size)
        per_side = tile // patch
        max_tiles = int(ip.max_image_tiles)
        canvas_h, canvas_w = get_optimal_tiled_canvas(height, width, max_tiles, tile)
        new_h, new_w = get_image_size_fit_to_canvas(height, width, canvas_h, canvas_w, tile)
        sx, sy = new_w / width, new_h / height
        tiles_x = canvas_w // tile
        n_tiles = (canvas_h // tile) * tiles_x
        per_tile = per_side * per_side + 1
        boxes = np.full((max_tiles * per_tile, 4), np.nan)
        kinds: list[FeatureKind] = []
        grids: list[Grid] = []
        for t in range(max_tiles):
            if t >= n_tiles:
                kinds.extend(["padding"] * per_tile)
                continue
            tx, ty = (t % tiles_x) * tile, (t // tiles_x) * tile
            kinds.append("cls")
            grids.append(
                Grid(
                    t * per_tile + 1,
                    per_side,
                    per_side,
                    (tx / sx, ty / sy, (tx + tile) / sx, (ty + tile) / sy),
                )
            )
            for r in range(per_side):
                for c in range(per_side):
                    x0, y0 = (tx + c * patch) / sx, (ty + r * patch) / sy
                    x1, y1 = (tx + (c + 1) * patch) / sx, (ty + (r + 1) * patch) / sy
                    box = (x0, y0, min(x1, float(width)), min(y1, float(height)))
                    index = t * per_tile + 1 + r * per_side + c
                    if box[2] > box[0] and box[3] > box[1]:
                        boxes[index] = box
                        kinds.append("patch")
                    else:
                        kinds.append("padding")
        return Geometry(boxes, tuple(kinds), tuple(grids), (width, height))

    def install_hooks(self, model: Any) -> list[RemovableHandle]:
        """Row-mask hooks on the cross-attention decoder layers."""
        handles: list[RemovableHandle] = []
        for module in model.modules():
            if type(module).__name__ == "MllamaCrossAttentionDecoderLayer":
                handles.append(module.register_forward_pre_hook(_row_mask_hook, with_kwargs=True))
        return handles


def _row_mask_hook(module: torch.nn.Module, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
    """Adjust the gated MLP's row mask of a cross-attention layer to the plan.

    Strict mode: a row the plan blocks from every image key gets no update at all (attention output
    is zero in the seam, the MLP update is zeroed here), exactly as if the text had no image.
    Paper mode: the MLP update is never masked, as in the research code.
    """
    plan = active_plan()
    if plan is None or plan.is_empty:
        return None
    layer = int(getattr(module.cross_attn, "layer_idx"))  # noqa: B009
    if plan.mode == "paper":
        return args, {**kwargs, "full_text_row_masked_out_mask": None}
    hidden = args[0] if args else kwargs["hidden_states"]
    row_mask = kwargs.get("full_text_row_masked_out_mask")
    if row_mask is None:
        return None
    q_len = hidden.shape[1]
    blocked = blocked_entries(plan, layer, q_len, 1, hidden.device)
    if blocked is None:
        return None
    keep = (~blocked[:, :, 0]).to(row_mask.dtype)[:, None, :, None]
    return args, {**kwargs, "full_text_row_masked_out_mask": row_mask * keep}
