"""What a knockout sweep returns for one sample, and the answer probability it is made of."""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch


class SampleNotSweepable(ValueError):
    """One sample cannot be swept as asked (an empty answer; a fast re-run that would not be exact for
    this sample's tokens); other samples can."""


@dataclass(frozen=True)
class KnockoutResult:
    """Answer probability of one sample: `p_full` unblocked, `probs[p][l]` with pathway `p` blocked in
    the window centred at layer `l` (one value per decoder layer), each the product over the answer
    tokens. `layer_evaluations` counts decoder-layer × token evaluations spent (text decoder only),
    the clean pass included (a sweep over several window sizes runs it once: do not add them up).

    The per-token probabilities behind them, from which any score can be recomputed
    (`vistrace.knockout.scores`): `p_full_tokens[i]` of answer token i unblocked, `token_probs[p][l][i]`
    blocked."""

    p_full: float
    probs: dict[str, list[float]]
    answer_tokens: tuple[int, ...]
    layer_evaluations: int
    p_full_tokens: tuple[float, ...] = ()
    token_probs: dict[str, list[list[float]]] = field(default_factory=dict)

    @classmethod
    def from_tokens(
        cls,
        answer: tuple[int, ...],
        full_tokens: list[float],
        tokens: dict[str, list[list[float]]],
        evaluations: int,
    ) -> KnockoutResult:
        """The result of per-token probabilities: products over the answer tokens."""
        probs = {name: [math.prod(values) for values in per_layer] for name, per_layer in tokens.items()}
        return cls(math.prod(full_tokens), probs, answer, evaluations, tuple(full_tokens), tokens)


def answer_probability(logits: torch.Tensor, token: int, temperature: float) -> torch.Tensor:
    """(B,) probability of `token` under softmax(logits / T), logits (B, V) cast to float32."""
    return torch.softmax(logits.float() / temperature, dim=-1)[:, token]
