"""The answer-training loss of the demo models: cross-entropy over the target tokens, computed with
the shared prefix run once and rows grouped by length (`batch_loss`), and the plain way
(`reference_loss`) it is measured against."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch

from vistrace import compat
from vistrace.demo.training_batches import IGNORE_INDEX, Example, collate


def shared_prefix_length(model: Any, input_ids: torch.Tensor) -> int:
    """How many leading tokens every row shares, up to the first image token (0 for Mllama)."""
    if model.config.model_type != "llava":
        return 0
    same = (input_ids == input_ids[:1]).all(dim=0) & (input_ids[0] != model.config.image_token_id)
    return int(same.long().cumprod(dim=0).sum())


def answer_loss(
    model: Any, batch: dict[str, torch.Tensor], labels: torch.Tensor, *, reduction: str = "mean"
) -> torch.Tensor:
    """Cross-entropy of the next-token predictions at the labelled positions (mean or sum).

    For LLaVA the prefix that every row shares (BOS, system line, ``USER:``) runs once and its
    keys/values are repeated over the batch: the same loss and gradients for about half the work.
    """
    prefix = shared_prefix_length(model, batch["input_ids"])
    if prefix < 2:
        prefix, cache, inputs = 0, None, batch
    else:
        ids = batch["input_ids"]
        cache = compat.output_cache(model.model.language_model(input_ids=ids[:1, :prefix], use_cache=True))
        cache.batch_repeat_interleave(ids.shape[0])
        inputs = {**batch, "input_ids": ids[:, prefix:]}
    # Only the positions that predict a label in some row go through the LM head.
    keep = (labels[:, prefix + 1 :] != IGNORE_INDEX).any(dim=0).nonzero().flatten()
    continued = {compat.model_cache_argument(model): cache} if cache is not None else {}
    logits = model(**inputs, **continued, use_cache=cache is not None, logits_to_keep=keep).logits
    targets = labels[:, prefix + 1 + keep]
    return torch.nn.functional.cross_entropy(
        logits.flatten(0, 1).float(), targets.flatten(), reduction=reduction
    )


def length_groups(lengths: Sequence[int], max_groups: int = 3, overhead: int = 512) -> list[list[int]]:
    """Indices of ``lengths`` in at most ``max_groups`` groups of similar length, chosen to minimise
    the padded tokens of the groups' batches plus ``overhead`` tokens per forward pass (the fixed
    cost of a pass; 512 was the fastest of 0, 128, 512 and 2048 on 2 CPU cores).

    Questions wrapped in the VQAv2 prompt are about twice as long as plain ones; one right-padded
    batch of both spends ~40% of its work on padding.
    """
    order = sorted(range(len(lengths)), key=lambda i: (lengths[i], i))
    sorted_lengths = [lengths[i] for i in order]
    n = len(order)
    inf = float("inf")
    # best[g][j]: least cost of the first j sorted rows in g groups; cut[g][j]: where its last group starts.
    best = [[inf] * (n + 1) for _ in range(max_groups + 1)]
    cut = [[0] * (n + 1) for _ in range(max_groups + 1)]
    best[0][0] = 0.0
    for groups in range(1, max_groups + 1):
        for end in range(1, n + 1):
            for start in range(end):
                cost = best[groups - 1][start] + (end - start) * sorted_lengths[end - 1] + overhead
                if cost < best[groups][end]:
                    best[groups][end], cut[groups][end] = cost, start
    groups = min(range(1, max_groups + 1), key=lambda g: best[g][n])
    bounds, end = [], n
    for g in range(groups, 0, -1):
        bounds.append((cut[g][end], end))
        end = cut[g][end]
    return [order[start:end] for start, end in reversed(bounds) if end > start]


def batch_loss(model: Any, examples: Sequence[Example], pad_id: int) -> torch.Tensor:
    """Mean cross-entropy over every target token of ``examples``: the loss of one padded batch of
    them, computed over groups of similar length (`length_groups`) to skip most of the padding."""
    targets = sum(len(example.target_ids) for example in examples)
    total = torch.zeros(())
    for group in length_groups([ex.inputs["input_ids"].shape[1] + len(ex.target_ids) for ex in examples]):
        batch, labels = collate([examples[i] for i in group], pad_id)
        total = total + answer_loss(model, batch, labels, reduction="sum")
    return total / targets


def reference_loss(model: Any, examples: Sequence[Example], pad_id: int) -> torch.Tensor:
    """`batch_loss` the slow, plain way: one right-padded batch, one full forward, logits everywhere."""
    batch, labels = collate(examples, pad_id)
    logits = model(**batch).logits[:, :-1]
    return torch.nn.functional.cross_entropy(logits.flatten(0, 1).float(), labels[:, 1:].flatten())
