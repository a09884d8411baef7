"""Scores of an answer from its per-token probabilities, and the change a knockout makes to them.

Each score maps per-token probabilities (…, T) — the probability of answer token i given the prompt
and tokens 0 … i-1 under teacher forcing — to one value per sample (…):

- `product`: the answer's probability, the product over its tokens (FlowTracker; the default);
- `geometric`: the product's T-th root, p^(1/T), FG-TRACER's length normalisation;
- `first`: the first answer token's probability;
- `mean-log`: the mean log-probability per token (nats).

`change(score, blocked, full)` is the percentage change (blocked − full) / full × 100 for the three
probabilities; for `mean-log`, whose values are negative logs, it is the difference blocked − full in
nats per token (its exponential is the geometric score's ratio).
"""

from __future__ import annotations

from collections.abc import Callable

import torch

ScoreFunction = Callable[[torch.Tensor], torch.Tensor]


def _product(tokens: torch.Tensor) -> torch.Tensor:
    return tokens.prod(dim=-1)


def _geometric(tokens: torch.Tensor) -> torch.Tensor:
    return tokens.log().mean(dim=-1).exp()


def _first(tokens: torch.Tensor) -> torch.Tensor:
    return tokens[..., 0]


def _mean_log(tokens: torch.Tensor) -> torch.Tensor:
    return tokens.log().mean(dim=-1)


SCORES: dict[str, ScoreFunction] = {
    "product": _product,
    "geometric": _geometric,
    "first": _first,
    "mean-log": _mean_log,
}


def score(name: str, tokens: torch.Tensor) -> torch.Tensor:
    """(…, T) per-token probabilities → (…) score `name` (one of `SCORES`)."""
    if name not in SCORES:
        raise ValueError(f"unknown score {name!r}; choose one of {', '.join(SCORES)}")
    if tokens.shape[-1] == 0:
        raise ValueError("no answer tokens to score")
    return SCORES[name](tokens.double())


def change(name: str, blocked: torch.Tensor, full: torch.Tensor) -> torch.Tensor:
    """The change of score `name` from `full` to `blocked` (percent; nats per token for mean-log)."""
    if name == "mean-log":
        return blocked - full
    return (blocked - full) / full * 100.0
