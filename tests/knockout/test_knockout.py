"""Knockout semantics, both strategies, both modes, both families."""

from __future__ import annotations

import pytest
import torch

import vistrace.hook.seam as seam_module
import vistrace.knockout.attention as rerun_attn
import vistrace.knockout.fast as knockout_fast
from vistrace.adapters import traced
from vistrace.hook import Knockout, Plan
from vistrace.knockout.sweep import PAPER_PATHWAYS, KnockoutRunner, Pathway, window_layers
from vistrace.models.loading import LoadedModel
from vistrace.models.tiny import FAMILIES
from vistrace.roles import Role

from ..conftest import scene_image

pytestmark = [pytest.mark.integration, pytest.mark.contract]

PATHWAYS = [Pathway.parse(p) for p in PAPER_PATHWAYS]


def _prepared(loaded: LoadedModel):
    return loaded.adapter.prepare(loaded.model, loaded.processor, scene_image(), "What color is the circle?")


def test_windows_clip_at_the_edges() -> None:
    assert window_layers(0, 9, 40) == range(0, 5)
    assert window_layers(39, 9, 40) == range(35, 40)
    assert window_layers(20, 9, 40) == range(16, 25)
    assert window_layers(5, 2, 40) == range(4, 7)  # an even k gives k + 1 layers
    assert window_layers(3, 1, 40) == range(3, 4)


def test_pathway_names_round_trip() -> None:
    assert Pathway.parse("image_to_question") == Pathway(Role.IMAGE, Role.QUESTION)
    assert Pathway.parse("template_to_answer").name == "template_to_answer"
    with pytest.raises(ValueError, match="src_to_dst"):
        Pathway.parse("image-last")
    with pytest.raises(ValueError, match="unknown role"):
        Pathway.parse("pixels_to_last")


@pytest.mark.parametrize("family", FAMILIES)
@pytest.mark.parametrize("mode", ["strict", "paper"])
@pytest.mark.parametrize("k", [1, 3, 9])
@pytest.mark.parametrize("answer", [[57], [57, 88, 101]])
def test_fast_equals_naive(
    tiny_models: dict[str, LoadedModel], family: str, mode: str, k: int, answer: list[int]
) -> None:
    loaded = tiny_models[family]
    prepared = _prepared(loaded)
    runner = KnockoutRunner(loaded, mode=mode)  # type: ignore[arg-type]
    # question_to_question in paper mode blocks every key of the first rows: the research code's block
    # value makes such a row uniform over all keys, later positions included.
    extra = ["image_to_answer", "question_to_template", "question_to_question"]
    pathways = [*PATHWAYS, *(Pathway.parse(p) for p in extra)]
    naive = runner.run(prepared, answer, pathways, k, "naive")
    fast = runner.run(prepared, answer, pathways, k, "fast")
    assert abs(fast.p_full - naive.p_full) <= 1e-5 + 1e-4 * naive.p_full
    for pathway in pathways:
        expected = torch.tensor(naive.probs[pathway.name], dtype=torch.float64)
        actual = torch.tensor(fast.probs[pathway.name], dtype=torch.float64)
        assert torch.all((actual - expected).abs() <= 1e-5 + 1e-4 * expected.abs()), pathway.name
        # The answer's probability can be far below the absolute tolerance: compare log-probabilities.
        worst_log = float((actual.log() - expected.log()).abs().max())
        assert worst_log <= 1e-4, (pathway.name, worst_log)
        # Every answer token's own probability agrees too, not only their product.
        per_token = torch.tensor(fast.token_probs[pathway.name]) / torch.tensor(
            naive.token_probs[pathway.name]
        )
        assert per_token.shape == (runner.n_layers, len(answer))
        assert float(per_token.log().abs().max()) <= 1e-4, pathway.name
    assert fast.p_full_tokens == pytest.approx(naive.p_full_tokens, rel=1e-5)
    assert fast.layer_evaluations < naive.layer_evaluations


@pytest.mark.parametrize("family", FAMILIES)
@pytest.mark.parametrize("mode", ["strict", "paper"])
def test_fast_in_batches_of_one_window_equals_naive(
    tiny_models: dict[str, LoadedModel], family: str, mode: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The batch limit splits a sweep into several re-runs without changing any number."""
    loaded = tiny_models[family]
    prepared = _prepared(loaded)
    runner = KnockoutRunner(loaded, mode=mode)  # type: ignore[arg-type]
    answer = [57, 88, 101]
    naive = runner.run(prepared, answer, PATHWAYS, 3, "naive")
    monkeypatch.setattr(knockout_fast, "ROWS_PER_CALL_PER_TOKEN", 0)
    fast = runner.run(prepared, answer, PATHWAYS, 3, "fast")
    for pathway in PATHWAYS:
        expected = torch.tensor(naive.probs[pathway.name], dtype=torch.float64)
        actual = torch.tensor(fast.probs[pathway.name], dtype=torch.float64)
        assert torch.all((actual - expected).abs() <= 1e-5 + 1e-4 * expected.abs()), pathway.name


def test_fast_starts_each_window_at_its_first_layer(tiny_models: dict[str, LoadedModel]) -> None:
    """image_to_last with k = 1 on LLaVA: one clean pass, then window l re-runs the last row through
    layers l … L-1 only."""
    loaded = tiny_models["llava"]
    prepared = _prepared(loaded)
    n_layers = loaded.adapter.num_layers(loaded.model)
    prompt_len = int(prepared.input_ids.shape[1])
    result = KnockoutRunner(loaded).run(prepared, [57], [Pathway.parse("image_to_last")], 1, "fast")
    reruns = sum(n_layers - first for first in range(n_layers))
    assert result.layer_evaluations == n_layers * prompt_len + reruns


@pytest.mark.parametrize("mode", ["strict", "paper"])
def test_prefixed_attention_equals_explicit_attention(mode: str) -> None:
    """Keys split into a prefix shared by the batch and per-element rows, with GQA, a causal mask,
    blocked entries and fully blocked rows: both re-run forms equal attention over the whole keys."""
    generator = torch.Generator().manual_seed(0)
    batch, heads, kv_heads, q_len, shared, dim = 3, 4, 2, 17, 11, 8
    k_len = shared + q_len
    query = torch.randn(batch, heads, q_len, dim, generator=generator)
    prefix = [torch.randn(1, kv_heads, shared, dim, generator=generator) for _ in range(2)]
    own = [torch.randn(batch, kv_heads, q_len, dim, generator=generator) for _ in range(2)]
    lowest = torch.finfo(torch.float32).min
    mask = torch.zeros(1, 1, q_len, k_len)
    mask[0, 0, :, shared:] = torch.triu(torch.full((q_len, q_len), lowest), diagonal=1)
    blocked = torch.rand(batch, q_len, k_len, generator=generator) < 0.3
    blocked[1, 4] = True  # a row with nothing left to attend to
    blocked[2] = False
    keys = torch.cat([prefix[0].expand(batch, -1, -1, -1), own[0]], dim=2)
    values = torch.cat([prefix[1].expand(batch, -1, -1, -1), own[1]], dim=2)
    parts = [(prefix[0], prefix[1]), (own[0], own[1])]
    for block in (None, blocked):
        expected, weights = seam_module.explicit_attention(
            torch.nn.Module(), query, keys, values, mask, dim**-0.5, block, mode
        )
        opened, opened_weights = rerun_attn.prefixed_attention(query, parts, mask, dim**-0.5, block, mode)
        fused = rerun_attn.fused_prefixed_attention(query, parts, mask, dim**-0.5, block, mode)
        torch.testing.assert_close(opened, expected, atol=1e-6, rtol=1e-5)
        torch.testing.assert_close(opened_weights, weights, atol=1e-6, rtol=1e-5)
        torch.testing.assert_close(fused, expected, atol=1e-6, rtol=1e-5)


@pytest.mark.parametrize("family", FAMILIES)
def test_strict_blocked_weights_are_exactly_zero(
    tiny_models: dict[str, LoadedModel], family: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    loaded = tiny_models[family]
    prepared = _prepared(loaded)
    seen: list[tuple[torch.Tensor, torch.Tensor]] = []
    original = seam_module.explicit_attention

    def recording(*args, **kwargs):
        output, weights = original(*args, **kwargs)
        seen.append((weights, args[6]))
        return output, weights

    monkeypatch.setattr(seam_module, "explicit_attention", recording)
    n_layers = loaded.adapter.num_layers(loaded.model)
    for src in (Role.IMAGE, Role.QUESTION):
        plan = Plan(
            cross_layers=loaded.adapter.cross_layers(loaded.model),
            knockout=Knockout(
                roles=prepared.roles[None],
                src=torch.tensor([int(src)], dtype=torch.int8),
                dst=torch.tensor([int(Role.LAST)], dtype=torch.int8),
                layers=torch.ones(1, n_layers, dtype=torch.bool),
            ),
        )
        with torch.no_grad(), traced(loaded.model, plan):
            loaded.model(**prepared.inputs)
    assert seen
    for weights, blocked in seen:
        assert bool(blocked.any())
        assert float(weights.masked_select(blocked[:, None].expand_as(weights)).abs().max()) == 0.0


def _layer_io(loaded: LoadedModel, prepared, plan: Plan, layer: int) -> tuple[torch.Tensor, torch.Tensor]:
    decoder_layer = loaded.model.get_decoder().layers[layer]
    captured: dict[str, torch.Tensor] = {}

    def pre(module, args, kwargs):
        captured["in"] = (args[0] if args else kwargs["hidden_states"]).clone()

    def post(module, args, kwargs, output):
        captured["out"] = (output[0] if isinstance(output, tuple) else output).clone()

    handles = [
        decoder_layer.register_forward_pre_hook(pre, with_kwargs=True),
        decoder_layer.register_forward_hook(post, with_kwargs=True),
    ]
    try:
        with torch.no_grad(), traced(loaded.model, plan):
            loaded.model(**prepared.inputs)
    finally:
        for handle in handles:
            handle.remove()
    return captured["in"], captured["out"]


@pytest.mark.parametrize("mode", ["strict", "paper"])
def test_fully_blocked_cross_attention_row(tiny_models: dict[str, LoadedModel], mode: str) -> None:
    """Strict: the row gets no update at all, as if the text had no image. Paper: it still moves."""
    loaded = tiny_models["mllama"]
    prepared = _prepared(loaded)
    layer = min(loaded.adapter.cross_layers(loaded.model))
    layers = torch.zeros(1, loaded.adapter.num_layers(loaded.model), dtype=torch.bool)
    layers[0, layer] = True
    plan = Plan(
        cross_layers=loaded.adapter.cross_layers(loaded.model),
        mode=mode,  # type: ignore[arg-type]
        knockout=Knockout(
            roles=prepared.roles[None],
            src=torch.tensor([int(Role.IMAGE)], dtype=torch.int8),
            dst=torch.tensor([int(Role.LAST)], dtype=torch.int8),
            layers=layers,
        ),
        image_rows=prepared.image_rows[None],
    )
    layer_in, layer_out = _layer_io(loaded, prepared, plan, layer)
    if mode == "strict":
        torch.testing.assert_close(layer_out[0, -1], layer_in[0, -1], atol=0, rtol=0)
    else:
        assert float((layer_out[0, -1] - layer_in[0, -1]).abs().max()) > 1e-4
    _, clean_out = _layer_io(loaded, prepared, Plan(), layer)
    if mode == "strict":
        torch.testing.assert_close(layer_out[0, :-1], clean_out[0, :-1], atol=1e-6, rtol=0)


def test_paper_mode_blocked_cross_row_is_uniform(
    tiny_models: dict[str, LoadedModel], monkeypatch: pytest.MonkeyPatch
) -> None:
    loaded = tiny_models["mllama"]
    prepared = _prepared(loaded)
    seen: list[torch.Tensor] = []
    original = seam_module.explicit_attention

    def recording(*args, **kwargs):
        output, weights = original(*args, **kwargs)
        seen.append(weights)
        return output, weights

    monkeypatch.setattr(seam_module, "explicit_attention", recording)
    n_layers = loaded.adapter.num_layers(loaded.model)
    plan = Plan(
        cross_layers=loaded.adapter.cross_layers(loaded.model),
        mode="paper",
        knockout=Knockout(
            roles=prepared.roles[None],
            src=torch.tensor([int(Role.IMAGE)], dtype=torch.int8),
            dst=torch.tensor([int(Role.LAST)], dtype=torch.int8),
            layers=torch.ones(1, n_layers, dtype=torch.bool),
        ),
        image_rows=prepared.image_rows[None],
    )
    with torch.no_grad(), traced(loaded.model, plan):
        loaded.model(**prepared.inputs)
    cross = [w for w in seen if w.shape[-1] != w.shape[-2]]
    assert cross
    for weights in cross:
        last = weights[0, :, -1]
        torch.testing.assert_close(last, torch.full_like(last, 1.0 / last.shape[-1]))
        first = weights[0, :, 0]  # the BOS row never sees the image: uniform too in paper mode
        torch.testing.assert_close(first, torch.full_like(first, 1.0 / first.shape[-1]))


def test_paper_baseline_differs_from_the_model_for_mllama(tiny_models: dict[str, LoadedModel]) -> None:
    loaded = tiny_models["mllama"]
    prepared = _prepared(loaded)
    answer = [57]
    strict = KnockoutRunner(loaded, mode="strict", temperature=1.0).run(prepared, answer, PATHWAYS[:1], 1)
    paper = KnockoutRunner(loaded, mode="paper", temperature=1.0).run(prepared, answer, PATHWAYS[:1], 1)
    with torch.no_grad():
        logits = loaded.model(**prepared.inputs).logits[0, -1]
    model_p = float(torch.softmax(logits.float(), dim=-1)[57])
    assert abs(strict.p_full - model_p) <= 1e-6
    assert abs(paper.p_full - model_p) > 1e-6


@pytest.mark.parametrize("family", FAMILIES)
def test_image_pathway_windows_without_image_layers_equal_p_full(
    tiny_models: dict[str, LoadedModel], family: str
) -> None:
    loaded = tiny_models[family]
    result = KnockoutRunner(loaded).run(_prepared(loaded), [57], [Pathway.parse("image_to_last")], 1)
    cross = loaded.adapter.cross_layers(loaded.model)
    for layer, prob in enumerate(result.probs["image_to_last"]):
        if cross and layer not in cross:
            assert prob == result.p_full
        else:
            assert prob != result.p_full


@pytest.mark.parametrize("mode", ["strict", "paper"])
@pytest.mark.parametrize("k", [1, 3])
def test_fast_equals_naive_where_deepstack_adds_to_rerun_rows(
    tiny_models: dict[str, LoadedModel], mode: str, k: int
) -> None:
    """Qwen3-VL adds vision features to the image rows after its first layers, outside attention: a
    re-run of image rows from those layers must add them too (`Adapter.after_layer`)."""
    loaded = tiny_models["qwen3_vl"]
    assert loaded.adapter.deepstack_layers(loaded.model) == (0, 1, 2)  # type: ignore[attr-defined]
    prepared = _prepared(loaded)
    runner = KnockoutRunner(loaded, mode=mode)  # type: ignore[arg-type]
    pathways = [Pathway.parse("image_to_image"), Pathway.parse("template_to_image")]
    naive = runner.run(prepared, [57, 88], pathways, k, "naive")
    fast = runner.run(prepared, [57, 88], pathways, k, "fast")
    for pathway in pathways:
        expected = torch.tensor(naive.probs[pathway.name], dtype=torch.float64)
        actual = torch.tensor(fast.probs[pathway.name], dtype=torch.float64)
        assert float((actual.log() - expected.log()).abs().max()) <= 1e-4, pathway.name
    # The window centred on layer 0 re-runs image rows through the layers DeepStack adds to.
    assert naive.probs["image_to_image"][0] != naive.p_full


def test_fast_refuses_a_family_whose_text_attention_is_not_causal(
    tiny_models: dict[str, LoadedModel], monkeypatch: pytest.MonkeyPatch
) -> None:
    loaded = tiny_models["llava"]
    monkeypatch.setattr(type(loaded.adapter), "text_attention_causal", False)
    runner = KnockoutRunner(loaded)
    with pytest.raises(ValueError, match=r"causal text attention.*strategy naive"):
        runner.run(_prepared(loaded), [57], PATHWAYS, 3, "fast")
    assert runner.run(_prepared(loaded), [57], PATHWAYS[:1], 3, "naive").p_full > 0
