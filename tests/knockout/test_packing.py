"""Several samples swept together (re-runs packed into shared calls) give each sample's own numbers."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import pytest
import torch

import vistrace.knockout.fast as fast_module
from vistrace.adapters import PreparedPrompt
from vistrace.knockout.rerun import rerun
from vistrace.knockout.sweep import PAPER_PATHWAYS, KnockoutResult, KnockoutRunner, Pathway
from vistrace.models.loading import LoadedModel
from vistrace.models.tiny import FAMILIES

from ..conftest import scene_image

pytestmark = [pytest.mark.integration]

PATHWAYS = [Pathway.parse(p) for p in [*PAPER_PATHWAYS, "image_to_answer", "question_to_question"]]
# Prompts of different lengths, images of different sizes (a different number of image features where
# the processor resizes dynamically), answers of one to three tokens: rows of different samples share
# calls only where their shapes agree, and some calls hold several samples.
SAMPLES = [
    ((48, 32), "What color is the circle?", [57]),
    ((32, 48), "Is there a square in the picture?", [61]),
    ((48, 32), "Color?", [57, 88]),
    ((40, 40), "What is at the top left of the image?", [70, 71, 72]),
    ((48, 32), "What color is the square?", [12]),
]


def _samples(loaded: LoadedModel) -> list[tuple[int, PreparedPrompt, list[int]]]:
    return [
        (i, loaded.adapter.prepare(loaded.model, loaded.processor, scene_image(*size), question), answer)
        for i, (size, question, answer) in enumerate(SAMPLES)
    ]


def _assert_same(packed: KnockoutResult, alone: KnockoutResult, pathways: Sequence[Pathway]) -> None:
    assert packed.p_full_tokens == alone.p_full_tokens  # both from the sample's own clean pass
    for pathway in pathways:
        got = torch.tensor(packed.token_probs[pathway.name], dtype=torch.float64)
        want = torch.tensor(alone.token_probs[pathway.name], dtype=torch.float64)
        assert got.shape == want.shape
        assert float((got.log() - want.log()).abs().max()) <= 1e-5, pathway.name
    assert packed.layer_evaluations == alone.layer_evaluations


@pytest.mark.parametrize("family", FAMILIES)
@pytest.mark.parametrize("mode", ["strict", "paper"])
def test_packed_sweep_equals_one_sample_at_a_time(
    tiny_models: dict[str, LoadedModel], family: str, mode: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    loaded = tiny_models[family]
    runner = KnockoutRunner(loaded, mode=mode)  # type: ignore[arg-type]
    samples = _samples(loaded)
    calls: list[int] = []

    def counting_rerun(*args: Any, **kwargs: Any) -> Any:
        calls.append(len(args[4]))
        return rerun(*args, **kwargs)

    monkeypatch.setattr(fast_module, "rerun", counting_rerun)
    alone = list(runner.sweep(samples, PATHWAYS, [1, 3]))
    alone_calls = list(calls)
    calls.clear()
    packed = list(runner.sweep(samples, PATHWAYS, [1, 3], pack_bytes=1 << 40))
    assert [s.tag for s in packed] == [s.tag for s in alone] == list(range(len(SAMPLES)))
    assert set(alone_calls) == {1}, "without pack_bytes every call holds one sample"
    assert max(calls) >= 3, "no call packed three samples"
    assert len(calls) < len(alone_calls)
    for p, a in zip(packed, alone, strict=True):
        assert p.error is None and a.error is None
        for k in (1, 3):
            _assert_same(p.results[k], a.results[k], PATHWAYS)
    # One sample at a time through `sweep` is `run`, exactly.
    single = runner.run(samples[3][1], samples[3][2], PATHWAYS, 3)
    assert single == alone[3].results[3]


def test_a_sample_that_cannot_be_swept_comes_back_with_its_error_in_order(
    tiny_models: dict[str, LoadedModel],
) -> None:
    runner = KnockoutRunner(tiny_models["llava"])
    samples = _samples(tiny_models["llava"])[:3]
    samples[1] = (1, samples[1][1], [])  # no answer tokens
    pathways = [Pathway.parse("image_to_last")]
    for pack_bytes in (0, 1 << 40):
        outcomes = list(runner.sweep(samples, pathways, [1], pack_bytes=pack_bytes))
        assert [o.tag for o in outcomes] == [0, 1, 2]
        assert outcomes[1].error == "the answer has no tokens to score" and not outcomes[1].results
        assert outcomes[0].error is None and outcomes[2].error is None
        assert outcomes[2].results[1] == runner.run(samples[2][1], samples[2][2], pathways, 1)
    with pytest.raises(ValueError, match="unknown strategy 'quick'"):
        list(runner.sweep(samples, pathways, [1], "quick"))
