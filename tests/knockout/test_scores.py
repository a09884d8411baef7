"""Scores from per-token probabilities, and a sweep's scores recomputed from what it kept."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

import vistrace
from vistrace.knockout import scores

from ..conftest import scene_image

pytestmark = [pytest.mark.unit]

probabilities = st.lists(st.floats(min_value=1e-6, max_value=1.0), min_size=1, max_size=8)


@given(probabilities)
def test_each_score_by_its_definition(values: list[float]) -> None:
    tokens = torch.tensor(values, dtype=torch.float64)
    assert float(scores.score("product", tokens)) == pytest.approx(math.prod(values), rel=1e-12)
    assert float(scores.score("geometric", tokens)) == pytest.approx(
        math.prod(values) ** (1 / len(values)), rel=1e-9
    )
    assert float(scores.score("first", tokens)) == values[0]
    assert float(scores.score("mean-log", tokens)) == pytest.approx(
        sum(math.log(v) for v in values) / len(values), rel=1e-9, abs=1e-12
    )


def test_change_is_percent_or_nats_and_unknown_scores_are_refused() -> None:
    full, blocked = torch.tensor(0.5), torch.tensor(0.25)
    assert float(scores.change("product", blocked, full)) == -50.0
    assert float(scores.change("mean-log", torch.tensor(-2.0), torch.tensor(-1.0))) == -1.0
    with pytest.raises(ValueError, match="unknown score"):
        scores.score("median", torch.ones(2))


def test_a_sweep_recomputes_every_score_from_its_tokens(tiny_dirs: dict[str, Path], tmp_path: Path) -> None:
    model = vistrace.load(tiny_dirs["llava"])
    prompt = model.prompt(scene_image(), "What is red?")
    sweep = vistrace.knockout_sweep(model, prompt, [57, 88, 101], pathways=["image_to_last"], window=3)
    assert sweep.token_probs is not None and sweep.p_full_tokens is not None
    assert sweep.token_probs.shape == (1, 4, 3)
    torch.testing.assert_close(sweep.token_probs.prod(dim=-1), sweep.probs)
    blocked, full = sweep.score("geometric")
    torch.testing.assert_close(blocked, sweep.probs ** (1 / 3))
    assert float(full) == pytest.approx(sweep.p_full ** (1 / 3))
    torch.testing.assert_close(
        sweep.change("first"), (sweep.token_probs[..., 0] / sweep.p_full_tokens[0] - 1) * 100
    )
    sweep.save(tmp_path / "s")
    again = vistrace.KnockoutSweep.load(tmp_path / "s")
    torch.testing.assert_close(again.change("mean-log"), sweep.change("mean-log"))
