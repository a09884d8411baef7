"""The seam proofs that the family-parametrized tests run on every family of
`vistrace.models.tiny.FAMILIES`, for a family whose tiny checkpoint is tested on its own: the
invariants of `vistrace check`, fast == naive knockout, captured rows == eager attention."""

from __future__ import annotations

from pathlib import Path

import torch
from transformers import AutoModelForImageTextToText

from vistrace.capture.generate import capture
from vistrace.check import run_checks
from vistrace.knockout.sweep import PAPER_PATHWAYS, KnockoutRunner, Pathway
from vistrace.models.loading import LoadedModel

from ..conftest import scene_image

QUESTION = "What color is the circle?"
PATHWAYS = [
    *(Pathway.parse(p) for p in PAPER_PATHWAYS),
    *(Pathway.parse(p) for p in ("image_to_answer", "question_to_template", "question_to_question")),
]


def assert_seam_checks_pass(loaded: LoadedModel) -> None:
    """Every check of `vistrace check` passes."""
    failures = [r for r in run_checks(loaded) if not r.passed]
    assert not failures, failures


def assert_fast_equals_naive(loaded: LoadedModel, mode: str, k: int, answer: list[int]) -> None:
    """The fast strategy gives the naive one's probabilities, per window and per answer token, with
    fewer layer evaluations; blocking the image changes the answer's probability."""
    prepared = loaded.adapter.prepare(loaded.model, loaded.processor, scene_image(), QUESTION)
    runner = KnockoutRunner(loaded, mode=mode)  # type: ignore[arg-type]
    naive = runner.run(prepared, answer, PATHWAYS, k, "naive")
    fast = runner.run(prepared, answer, PATHWAYS, k, "fast")
    assert abs(fast.p_full - naive.p_full) <= 1e-5 + 1e-4 * naive.p_full
    for pathway in PATHWAYS:
        expected = torch.tensor(naive.probs[pathway.name], dtype=torch.float64)
        actual = torch.tensor(fast.probs[pathway.name], dtype=torch.float64)
        assert float((actual.log() - expected.log()).abs().max()) <= 1e-4, pathway.name
        per_token = torch.tensor(fast.token_probs[pathway.name]) / torch.tensor(
            naive.token_probs[pathway.name]
        )
        assert per_token.shape == (runner.n_layers, len(answer))
        assert float(per_token.log().abs().max()) <= 1e-4, pathway.name
    assert fast.layer_evaluations < naive.layer_evaluations
    assert naive.probs["image_to_last"] != [naive.p_full] * runner.n_layers


def assert_captured_rows_equal_eager(loaded: LoadedModel, checkpoint: Path) -> None:
    """Captured attention of every generated token to the image keys, in every layer, equals that of
    one eager forward over prompt + output with `output_attentions=True`."""
    result = capture(loaded, scene_image(), QUESTION, max_new_tokens=6, dtype=torch.float32)
    eager = AutoModelForImageTextToText.from_pretrained(checkpoint, attn_implementation="eager").eval()
    loaded.adapter.prepare_model(eager)
    prepared = loaded.adapter.prepare(loaded.model, loaded.processor, scene_image(), QUESTION)
    prompt_len, count = len(result.input_ids), result.num_tokens
    fed = torch.tensor([[*result.input_ids, *result.output_ids[:-1]]])
    inputs = loaded.adapter.extend_inputs(prepared.inputs, fed)
    with torch.no_grad():
        attentions = eager(**inputs, output_attentions=True).attentions
    assert prepared.image_keys is not None
    rows = [
        attentions[layer][0, :, prompt_len - 1 : prompt_len - 1 + count][..., prepared.image_keys]
        for layer in result.layers
    ]
    reference = torch.stack([row.permute(1, 0, 2) for row in rows], dim=1)
    assert result.layers == tuple(range(loaded.adapter.num_layers(loaded.model)))
    assert result.geometry.num_features == len(prepared.image_keys)
    assert result.image_attention.shape == reference.shape
    torch.testing.assert_close(result.image_attention, reference, atol=1e-5, rtol=0)
