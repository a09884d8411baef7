"""The pointing game: does a model's attention on the image peak on the shape its answer is about?

For every question about exactly one shape (its `QA.target_boxes` holds one box), the model answers
greedily with capture on (`vistrace.capture.generate.capture`). The answer tokens' attention (T, L, H, N),
the final EOS dropped, is pooled over heads and tokens by the mean and over the layers of one
*layer group* by the mean, giving one value per image feature. The *peak* is the feature with the
largest value among those that cover a region of the image (CLS and padding features excluded).
It is a *hit* when the peak feature's region overlaps the shape's box.

Because a feature region is a whole patch, a random peak can also hit; the *chance* rate is the
share of regions that overlap the box, averaged over samples, and is reported beside the hit rate.
Layer groups split the layers that see the image into up to three contiguous runs (early, middle,
late); ``all`` pools every such layer.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
from tqdm.auto import tqdm

from vistrace.capture.generate import capture
from vistrace.capture.pooling import without_eos
from vistrace.demo.world import Box, Sample, render
from vistrace.models.loading import LoadedModel

GROUP_NAMES = ("early", "middle", "late")


@dataclass(frozen=True)
class GroupScore:
    """Pointing results of one layer group: ``layers`` pooled, ``hits`` of ``samples``, chance rate."""

    name: str
    layers: tuple[int, ...]
    hits: int
    samples: int
    chance: float

    @property
    def accuracy(self) -> float:
        return self.hits / self.samples if self.samples else float("nan")


def layer_groups(layers: Sequence[int]) -> list[tuple[str, tuple[int, ...]]]:
    """Up to three contiguous runs of ``layers`` named early/middle/late, then ``all``."""
    chunks = [chunk for chunk in np.array_split(np.asarray(layers), min(3, len(layers))) if len(chunk)]
    names = GROUP_NAMES if len(chunks) == 3 else GROUP_NAMES[:: 2 if len(chunks) == 2 else 1]
    groups = [(name, tuple(int(i) for i in chunk)) for name, chunk in zip(names, chunks, strict=False)]
    return [*groups, ("all", tuple(int(i) for i in layers))]


def overlaps(regions: np.ndarray, box: Box) -> np.ndarray:
    """(N,) bool: which (N, 4) ``regions`` (x0, y0, x1, y1; NaN = none) share area with ``box``."""
    left, top, right, bottom = box
    with np.errstate(invalid="ignore"):
        return (
            (regions[:, 0] < right)
            & (regions[:, 2] > left)
            & (regions[:, 1] < bottom)
            & (regions[:, 3] > top)
        )


def feature_map(attention: torch.Tensor, ends_with_eos: bool, layer_positions: Sequence[int]) -> np.ndarray:
    """(T, L, H, N) attention → (N,): mean over answer tokens, heads and the given layer positions."""
    answer = without_eos(attention, ends_with_eos).float()
    return answer[:, list(layer_positions)].mean(dim=(0, 1, 2)).numpy()


def pointing_game(
    loaded: LoadedModel, samples: Sequence[Sample], *, max_new_tokens: int = 8, progress: bool = True
) -> list[GroupScore]:
    """Play the pointing game on the single-shape questions of ``samples``; one score per layer group."""
    single = [sample for sample in samples if len(sample.qa.target_boxes) == 1]
    groups = layer_groups(loaded.adapter.image_layers(loaded.model))
    hits = dict.fromkeys((name for name, _ in groups), 0)
    chance: list[float] = []
    for sample in tqdm(single, desc="pointing game", disable=not progress):
        stage = capture(loaded, render(sample.scene), sample.qa.question, max_new_tokens=max_new_tokens)
        regions = stage.geometry.boxes
        valid = ~np.isnan(regions).any(axis=1)
        inside = overlaps(regions, sample.qa.target_boxes[0]) & valid
        chance.append(float(inside.sum() / valid.sum()))
        for name, layers in groups:
            values = feature_map(
                stage.image_attention, stage.ends_with_eos, [stage.layers.index(i) for i in layers]
            )
            peak = int(np.argmax(np.where(valid, values, -np.inf)))
            hits[name] += int(inside[peak])
    rate = float(np.mean(chance)) if chance else float("nan")
    return [GroupScore(name, layers, hits[name], len(single), rate) for name, layers in groups]


def format_pointing(family: str, scores: Sequence[GroupScore]) -> str:
    """A small text table of ``scores``."""
    lines = [f"pointing game ({family}): peak of the answer's image attention inside the shape's box"]
    for score in scores:
        layers = ",".join(str(i) for i in score.layers)
        lines.append(
            f"  {score.name:<7} layers {layers:<14} {score.hits:>3}/{score.samples:<3} "
            f"= {100 * score.accuracy:5.1f}%   (chance {100 * score.chance:.1f}%)"
        )
    return "\n".join(lines)


__all__ = ["GroupScore", "feature_map", "format_pointing", "layer_groups", "overlaps", "pointing_game"]
