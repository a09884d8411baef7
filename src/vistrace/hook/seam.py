"""The one attention function vistrace registers with transformers, and its mask function.

Every decoder attention call of a traced model arrives here. With an empty plan the call goes to
transformers' own sdpa function untouched; a knockout adds its block to the scores of the rows and
layers it targets; a capture keeps the last query row's attention on the image keys.
"""

from __future__ import annotations

from contextvars import ContextVar
from typing import Any

import torch

from vistrace.compat import register_attention, sdpa_functions
from vistrace.hook.plan import Plan, Segment, active_plan, use_plan
from vistrace.roles import Role

SEAM_NAME = "vistrace"
sdpa_attention_forward, repeat_kv = sdpa_functions()

REACHED_LAYERS: ContextVar[tuple[set[int], ...]] = ContextVar("vistrace_reached_layers", default=())
"""The `layer_idx` sets of the traced blocks now open (`vistrace.hook.traced`): every call that
reaches the seam adds its layer to each, so a block can tell which of the layers that ran did not."""


def blocked_entries(
    plan: Plan, layer: int, q_len: int, k_len: int, device: torch.device
) -> torch.Tensor | None:
    """(B, Q, K) bool: the score entries the plan blocks in `layer` for the current call, or None.

    Keys of a cross-attention layer are all image features; keys of a self-attention layer take the
    roles of their absolute positions. In paper mode the rows of a cross-attention layer that the
    processor keeps away from the image are blocked too (the research code's uniform rows). A plan
    that packs several samples (`Plan.segments`) gives each segment's entries at its elements.
    """
    if plan.segments is not None:
        return _segmented_blocked(plan.segments, layer, q_len, k_len, device)
    is_cross = layer in plan.cross_layers
    blocked: torch.Tensor | None = None
    knockout = plan.knockout
    if knockout is not None and bool(knockout.layers[:, layer].any()):
        rows = knockout.roles[:, plan.offset : plan.offset + q_len].to(device)
        dst = knockout.dst.to(device)[:, None]
        src = knockout.src.to(device)[:, None]
        row_hit = rows == dst
        if is_cross:
            col_hit = (src == Role.IMAGE).expand(-1, k_len)
        else:
            col_hit = knockout.roles[:, :k_len].to(device) == src
        active = knockout.layers[:, layer].to(device)[:, None, None]
        blocked = row_hit[:, :, None] & col_hit[:, None, :] & active
    if blocked is not None and not bool(blocked.any()):
        blocked = None
    if plan.mode == "paper" and is_cross and plan.image_rows is not None:
        no_image = ~plan.image_rows[:, plan.offset : plan.offset + q_len].to(device)
        no_image_entries = no_image[:, :, None].expand(-1, -1, k_len)
        blocked = no_image_entries if blocked is None else blocked | no_image_entries
    return blocked


def _segmented_blocked(
    segments: tuple[Segment, ...], layer: int, q_len: int, k_len: int, device: torch.device
) -> torch.Tensor | None:
    parts = [(s.index, blocked_entries(s.plan, layer, q_len, k_len, device)) for s in segments]
    if all(blocked is None for _, blocked in parts):
        return None
    batch = sum(len(index) for index, _ in parts)
    out = torch.zeros(batch, q_len, k_len, dtype=torch.bool, device=device)
    for index, blocked in parts:
        if blocked is not None:
            out[index.to(device)] = blocked.expand(len(index), -1, -1)
    return out


def explicit_attention(
    module: torch.nn.Module,
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    attention_mask: torch.Tensor | None,
    scaling: float,
    blocked: torch.Tensor | None,
    mode: str,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Attention computed in the open, with `blocked` (B, Q, K) applied per `mode`.

    query (B, H, Q, D), key/value (B, H_kv, K, D), mask (B, 1, Q, K) additive.
    Returns output (B, Q, H, D) and weights (B, H, Q, K) float32.
    """
    n_rep = query.shape[1] // key.shape[1]
    key = repeat_kv(key, n_rep)
    value = repeat_kv(value, n_rep)
    scores = torch.matmul(query, key.transpose(2, 3)) * scaling
    weights = masked_weights(scores, attention_mask, blocked, mode)
    output = torch.matmul(weights.to(value.dtype), value)
    return output.transpose(1, 2).contiguous(), weights


def masked_weights(
    scores: torch.Tensor, attention_mask: torch.Tensor | None, blocked: torch.Tensor | None, mode: str
) -> torch.Tensor:
    """Softmax weights (float32) of raw scores (B, H, Q, K) under the additive mask and the block."""
    scores, dead = masked_scores(scores, attention_mask, blocked, mode)
    weights = torch.softmax(scores, dim=-1, dtype=torch.float32)
    return weights if dead is None else torch.where(dead, 0.0, weights)


def masked_scores(
    scores: torch.Tensor, attention_mask: torch.Tensor | None, blocked: torch.Tensor | None, mode: str
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Scores (B or 1, H or 1, Q, K) plus the additive mask, with the blocked entries (B, Q, K) taken out
    as ``mode`` says; and, in strict mode, the rows (B, 1, Q, 1) left with nothing to attend to (their
    weights must be zero), else None."""
    if attention_mask is not None:
        attention_mask = attention_mask[:, :, :, : scores.shape[-1]]
        scores = scores + attention_mask
    if blocked is None:
        return scores, None
    lowest = torch.finfo(scores.dtype).min
    if mode == "paper":
        # The research code adds the most negative finite value; clamping keeps an already masked
        # entry at that value instead of overflowing to -inf, so a fully blocked row is uniform.
        penalty = torch.where(blocked[:, None], lowest, 0.0).to(scores.dtype)
        return torch.clamp(scores + penalty, min=lowest), None
    allowed = ~blocked[:, None]
    if attention_mask is not None:
        allowed = allowed & (attention_mask > lowest / 2)
    return scores.masked_fill(~allowed, float("-inf")), ~allowed.any(dim=-1, keepdim=True)


def _last_row_weights(
    query: torch.Tensor, key: torch.Tensor, attention_mask: torch.Tensor | None, scaling: float
) -> torch.Tensor:
    """(B, H, K) float32 softmax weights of the last query row, as eager attention computes them.

    Query heads are grouped onto their key head (head h reads key head h // (H / H_kv), as
    `repeat_kv` arranges them), so the keys are never copied per query head."""
    batch, heads, _, dim = query.shape
    kv_heads = key.shape[1]
    grouped = query[:, :, -1].reshape(batch, kv_heads, heads // kv_heads, dim)
    scores = torch.matmul(grouped, key.transpose(2, 3)).reshape(batch, heads, 1, -1) * scaling
    if attention_mask is not None:
        scores = scores + attention_mask[:, :, -1:, : key.shape[-2]]
    return torch.softmax(scores, dim=-1, dtype=torch.float32)[:, :, 0]


def seam_attention(
    module: torch.nn.Module,
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    attention_mask: torch.Tensor | None,
    dropout: float = 0.0,
    scaling: float | None = None,
    **kwargs: Any,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """The registered attention function: (B, H, Q, D) queries → output (B, Q, H, D), weights or None."""
    plan = active_plan()
    layer = getattr(module, "layer_idx", None)
    if layer is not None:
        for reached in REACHED_LAYERS.get():
            reached.add(int(layer))
    if plan is not None and plan.segments is not None:
        return _segmented_attention(
            plan.segments, module, query, key, value, attention_mask, dropout, scaling, **kwargs
        ), None
    if plan is None or plan.is_empty or layer is None:
        return sdpa_attention_forward(
            module, query, key, value, attention_mask, dropout=dropout, scaling=scaling, **kwargs
        )
    scale = scaling if scaling is not None else query.shape[-1] ** -0.5
    capture = plan.capture
    wants_capture = capture is not None and layer in capture.layers
    prefix = plan.prefix.get(layer) if plan.prefix is not None else None
    last_row: torch.Tensor | None = None
    if prefix is not None:
        # A re-run of a few rows: keys = the shared prefix, then this call's own keys.
        k_len = prefix.length + key.shape[2]
        blocked = blocked_entries(plan, layer, query.shape[2], k_len, query.device)
        output, weights = prefix.attend(
            query, key, value, attention_mask, scale, blocked, plan.mode, need_weights=wants_capture
        )
        last_row = weights[:, :, -1] if wants_capture and weights is not None else None
    else:
        blocked = blocked_entries(plan, layer, query.shape[2], key.shape[2], query.device)
        output, _ = sdpa_attention_forward(
            module, query, key, value, attention_mask, dropout=dropout, scaling=scaling, **kwargs
        )
        if blocked is None:
            last_row = _last_row_weights(query, key, attention_mask, scale) if wants_capture else None
        else:
            blocked_output, weights = explicit_attention(
                module, query, key, value, attention_mask, scale, blocked, plan.mode
            )
            # Rows without a blocked entry keep sdpa's own numbers, so only the targeted rows change.
            touched = blocked.any(dim=-1)[:, :, None, None]
            output = torch.where(touched, blocked_output.to(output.dtype), output)
            last_row = weights[:, :, -1] if wants_capture else None
    if capture is not None and last_row is not None:
        if capture.image_keys is not None:
            index = capture.image_keys.to(last_row.device)[:, None, :].expand(-1, last_row.shape[1], -1)
            last_row = torch.gather(last_row, 2, index)
        capture.record(layer, last_row)
    return output, None


def _segmented_attention(
    segments: tuple[Segment, ...],
    module: torch.nn.Module,
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    attention_mask: torch.Tensor | None,
    dropout: float,
    scaling: float | None,
    **kwargs: Any,
) -> torch.Tensor:
    """Output (B, Q, H, D) of a call packing several samples: each segment's elements go through the
    seam under their own plan, so a row attends only to its own sample's keys. A mask of batch B is
    split with them (a sample's mask may be padded on the right past its own keys: `masked_scores`
    cuts it to the keys it scores)."""
    if sum(len(segment.index) for segment in segments) != query.shape[0]:
        raise ValueError(f"the segments of a packed call do not cover its {query.shape[0]} batch elements")
    output = query.new_empty(query.shape[0], query.shape[2], query.shape[1], value.shape[-1])
    for segment in segments:
        index = segment.index.to(query.device)

        def rows(tensor: torch.Tensor, index: torch.Tensor = index) -> torch.Tensor:
            # A tensor of batch 1 (an empty cross-attention cache, a shared mask) serves every element.
            return tensor if tensor.shape[0] == 1 else tensor.index_select(0, index)

        with use_plan(segment.plan):
            part, _ = seam_attention(
                module,
                query.index_select(0, index),
                rows(key),
                rows(value),
                None if attention_mask is None else rows(attention_mask),
                dropout,
                scaling,
                **kwargs,
            )
        output.index_copy_(0, index, part.to(output.dtype))
    return output


def register() -> None:
    """Register the seam and its explicit-mask function with transformers (idempotent)."""
    register_attention(SEAM_NAME, seam_attention)
