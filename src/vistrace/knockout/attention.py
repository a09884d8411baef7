"""Attention bodies of the fast re-run: a few query rows over the clean pass' keys, shared, not copied.

The re-run (`vistrace.knockout.rerun`) hands the seam a `PrefixKV` per layer through
`Plan.prefix`; the seam applies the plan's block and calls `PrefixKV.attend`. The masking is the
seam's own (`masked_scores`), so a re-run row gets exactly the weights of a full forward.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from vistrace.hook.seam import masked_scores, masked_weights

# A re-run call with at least this many query rows goes through sdpa; fewer rows are cheaper in the open.
FUSED_ROWS = 16


@dataclass(frozen=True)
class PrefixKV:
    """Keys and values (1 or B, H_kv, P, D) of absolute positions 0 … P-1 of one layer, placed before
    the keys the attention module passes (for a cross-attention layer: all image keys, and the module
    passes none)."""

    keys: torch.Tensor
    values: torch.Tensor

    @property
    def length(self) -> int:
        return int(self.keys.shape[2])

    def attend(
        self,
        query: torch.Tensor,
        key: torch.Tensor,
        value: torch.Tensor,
        attention_mask: torch.Tensor | None,
        scaling: float,
        blocked: torch.Tensor | None,
        mode: str,
        *,
        need_weights: bool,
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Output (B, Q, H, D) of `query` (B, H, Q, D) over this prefix then `key`/`value`, and the
        weights (B, H, Q, P + K) float32 when `need_weights` (else None; many rows then go through sdpa)."""
        parts = [(self.keys, self.values), (key, value)]
        if query.shape[2] >= FUSED_ROWS and not need_weights:
            return fused_prefixed_attention(query, parts, attention_mask, scaling, blocked, mode), None
        return prefixed_attention(query, parts, attention_mask, scaling, blocked, mode)


def prefixed_attention(
    query: torch.Tensor,
    parts: list[tuple[torch.Tensor, torch.Tensor]],
    attention_mask: torch.Tensor | None,
    scaling: float,
    blocked: torch.Tensor | None,
    mode: str,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Attention over keys given in consecutive parts, each (1 or B, H_kv, K_i, D), in the open.

    A part of batch 1 is shared by every query row of the batch and is never copied per batch element
    or per head: query heads are grouped onto their key head and the batch folded into the rows. Same
    masking as `explicit_attention`; returns output (B, Q, H, D) and weights (B, H, Q, K) float32.
    """
    batch, heads, q_len, dim = query.shape
    kv_heads = parts[0][0].shape[1]
    rows = heads // kv_heads * q_len
    grouped = query.reshape(batch, kv_heads, rows, dim)
    parts = [(k, v) for k, v in parts if k.shape[2] > 0]
    scores = torch.cat([_grouped_product(grouped, k.transpose(2, 3)) for k, _ in parts], dim=-1)
    scores = scores.reshape(batch, heads, q_len, -1) * scaling
    weights = masked_weights(scores, attention_mask, blocked, mode)
    grouped_weights = weights.view(batch, kv_heads, rows, weights.shape[-1])
    output: torch.Tensor | None = None
    offset = 0
    for k, v in parts:
        chunk = grouped_weights[..., offset : offset + k.shape[2]].to(v.dtype)
        term = _grouped_product(chunk, v)
        output = term if output is None else output + term
        offset += k.shape[2]
    assert output is not None
    return output.reshape(batch, heads, q_len, dim).transpose(1, 2).contiguous(), weights


def fused_prefixed_attention(
    query: torch.Tensor,
    parts: list[tuple[torch.Tensor, torch.Tensor]],
    attention_mask: torch.Tensor | None,
    scaling: float,
    blocked: torch.Tensor | None,
    mode: str,
) -> torch.Tensor:
    """`prefixed_attention` through sdpa, the block folded into the additive mask (no weights).

    Gives the same numbers: in paper mode a blocked score x becomes x + lowest, clamped, which in the
    open is lowest too (x is absorbed); in strict mode a blocked entry is -inf and a row left with
    nothing to attend to is set to zero, as `explicit_attention` does. Faster than the open form
    once a call has many query rows; the shared parts are expanded (copied) over the batch.
    """
    batch = query.shape[0]
    keys = torch.cat([k.expand(batch, -1, -1, -1) for k, _ in parts], dim=2)
    values = torch.cat([v.expand(batch, -1, -1, -1) for _, v in parts], dim=2)
    mask: torch.Tensor | None = None
    dead: torch.Tensor | None = None
    if blocked is not None or attention_mask is not None:
        zeros = torch.zeros(1, 1, query.shape[2], keys.shape[2], dtype=query.dtype, device=query.device)
        mask, dead = masked_scores(zeros, attention_mask, blocked, mode)
    output = torch.nn.functional.scaled_dot_product_attention(
        query, keys, values, attn_mask=mask, scale=scaling, enable_gqa=True
    )
    if dead is not None:
        output = torch.where(dead, 0.0, output)
    return output.transpose(1, 2).contiguous()


def _grouped_product(left: torch.Tensor, right: torch.Tensor) -> torch.Tensor:
    """left (B, H, M, N) @ right (1 or B, H, N, P) → (B, H, M, P); a shared `right` is not copied."""
    if right.shape[0] == left.shape[0]:
        return torch.matmul(left, right)
    batch, heads, rows, inner = left.shape
    folded = left.transpose(0, 1).reshape(heads, batch * rows, inner)
    product = torch.matmul(folded, right[0])
    return product.view(heads, batch, rows, -1).transpose(0, 1)
