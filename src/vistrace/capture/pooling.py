"""Pooling captured image attention (T tokens, L layers, H heads, N features) into maps and scores.

Two steps make a map over the image:

1. per token, over layers and heads — a `LAYER_HEAD_POOLS` function, (T, L, H, N) → (T, N):
   - `top_k_mean` (the paper's default): for every token, head and feature, the mean of its k largest
     values across layers; then, for every token and feature, the mean of the k largest of those
     across heads. The top-k is taken per feature, so different features may draw on different
     layers and heads. k is clipped to the number of layers / heads available (Mllama models have
     few cross-attention layers).
   - `mean`: the mean over layers and heads.
   - `max`: the maximum over layers and heads.
2. over tokens — a `TOKEN_POOLS` function, (T, N) → (N,):
   - `mean`: the mean over tokens.
   - `top_l_mean`: per feature, the mean of its l largest values across tokens. The paper compares
     two generations with l = the shorter of the two lengths without the final EOS
     (`shared_top_l`), so a long output is not diluted by its extra tokens.

A trailing EOS token is dropped before pooling over tokens (`without_eos`), as in the paper.

One number per token for the text heatmap (`token_image_attention`): the sum over image features,
then the L2 norm over heads, then the L2 norm over layers.
"""

from __future__ import annotations

from collections.abc import Callable

import torch

LayerHeadPool = Callable[[torch.Tensor, int], torch.Tensor]
TokenPool = Callable[[torch.Tensor, int | None], torch.Tensor]


def _check(attention: torch.Tensor) -> torch.Tensor:
    if attention.dim() != 4:
        raise ValueError(f"expected (tokens, layers, heads, features), got shape {tuple(attention.shape)}")
    return attention.float()


def top_k_mean(attention: torch.Tensor, top_k: int = 3) -> torch.Tensor:
    """(T, L, H, N) → (T, N): mean of the top-k layers, then mean of the top-k heads, per feature."""
    values = _check(attention)
    if top_k < 1:
        raise ValueError(f"top_k must be at least 1, got {top_k}")
    by_layer = torch.topk(values, min(top_k, values.shape[1]), dim=1).values.mean(dim=1)
    return torch.topk(by_layer, min(top_k, by_layer.shape[1]), dim=1).values.mean(dim=1)


def mean_pool(attention: torch.Tensor, top_k: int = 3) -> torch.Tensor:
    """(T, L, H, N) → (T, N): mean over layers and heads (`top_k` unused)."""
    return _check(attention).mean(dim=(1, 2))


def max_pool(attention: torch.Tensor, top_k: int = 3) -> torch.Tensor:
    """(T, L, H, N) → (T, N): maximum over layers and heads (`top_k` unused)."""
    return _check(attention).amax(dim=(1, 2))


def tokens_mean(per_token: torch.Tensor, top_l: int | None = None) -> torch.Tensor:
    """(T, N) → (N,): mean over tokens (`top_l` unused)."""
    if per_token.shape[0] == 0:
        raise ValueError("no tokens to pool")
    return per_token.float().mean(dim=0)


def tokens_top_l_mean(per_token: torch.Tensor, top_l: int | None = None) -> torch.Tensor:
    """(T, N) → (N,): per feature, mean of the `top_l` largest values across tokens (all when None)."""
    if per_token.shape[0] == 0:
        raise ValueError("no tokens to pool")
    count = per_token.shape[0] if top_l is None else max(1, min(int(top_l), per_token.shape[0]))
    return torch.topk(per_token.float(), count, dim=0).values.mean(dim=0)


LAYER_HEAD_POOLS: dict[str, LayerHeadPool] = {
    "top_k_mean": top_k_mean,
    "mean": mean_pool,
    "max": max_pool,
}
TOKEN_POOLS: dict[str, TokenPool] = {
    "mean": tokens_mean,
    "top_l_mean": tokens_top_l_mean,
}


def _lookup(
    registry: dict[str, Callable[..., torch.Tensor]], name: str, what: str
) -> Callable[..., torch.Tensor]:
    try:
        return registry[name]
    except KeyError:
        raise ValueError(f"unknown {what} {name!r}; choose one of: {', '.join(registry)}") from None


def register_pool(name: str, function: LayerHeadPool, *, replace: bool = False) -> None:
    """Add a (T, L, H, N) → (T, N) pooling function under `name`."""
    if name in LAYER_HEAD_POOLS and not replace:
        raise ValueError(f"a pooling function named {name!r} exists; pass replace=True to override it")
    LAYER_HEAD_POOLS[name] = function


def without_eos(attention: torch.Tensor, ends_with_eos: bool) -> torch.Tensor:
    """`attention` (T, ...) without its last token when that token is an EOS."""
    return attention[:-1] if ends_with_eos and attention.shape[0] > 1 else attention


def pool_tokens(attention: torch.Tensor, pool: str = "top_k_mean", top_k: int = 3) -> torch.Tensor:
    """(T, L, H, N) → (T, N) with the `LAYER_HEAD_POOLS` function `pool`."""
    return _lookup(LAYER_HEAD_POOLS, pool, "pooling method")(attention, top_k)


def pool_map(
    attention: torch.Tensor,
    *,
    pool: str = "top_k_mean",
    top_k: int = 3,
    tokens: str = "mean",
    top_l: int | None = None,
) -> torch.Tensor:
    """(T, L, H, N) → (N,): `pool` over layers and heads per token, then `tokens` over tokens."""
    per_token = pool_tokens(attention, pool, top_k)
    return _lookup(TOKEN_POOLS, tokens, "token pooling")(per_token, top_l)


def shared_top_l(*content_lengths: int) -> int:
    """The paper's l: the shortest of the given generation lengths (each without its final EOS)."""
    if not content_lengths:
        raise ValueError("give at least one length")
    return max(1, min(content_lengths))


def token_image_attention(attention: torch.Tensor) -> torch.Tensor:
    """(T, L, H, N) → (T,): sum over features, L2 norm over heads, then L2 norm over layers."""
    summed = _check(attention).sum(dim=-1)
    return torch.linalg.vector_norm(torch.linalg.vector_norm(summed, dim=-1), dim=-1)


__all__ = [
    "LAYER_HEAD_POOLS",
    "TOKEN_POOLS",
    "LayerHeadPool",
    "TokenPool",
    "max_pool",
    "mean_pool",
    "pool_map",
    "pool_tokens",
    "register_pool",
    "shared_top_l",
    "token_image_attention",
    "tokens_mean",
    "tokens_top_l_mean",
    "top_k_mean",
    "without_eos",
]
