"""The seam's invariants for every supported family."""

from __future__ import annotations

import pytest
import torch

import vistrace.hook.seam as seam_module
from vistrace.adapters import UnsupportedModelError, get_adapter, traced
from vistrace.hook import Knockout, Plan
from vistrace.models.loading import LoadedModel
from vistrace.roles import Role

from ..conftest import scene_image

pytestmark = [pytest.mark.integration, pytest.mark.contract]

FAMILIES = ["llava", "mllama"]


def _prepared(loaded: LoadedModel):
    return loaded.adapter.prepare(loaded.model, loaded.processor, scene_image(), "What color is the circle?")


def _knockout(roles: torch.Tensor, src: Role, dst: Role, layers: torch.Tensor) -> Knockout:
    return Knockout(
        roles=roles[None],
        src=torch.tensor([int(src)], dtype=torch.int8),
        dst=torch.tensor([int(dst)], dtype=torch.int8),
        layers=layers[None],
    )


@pytest.mark.parametrize("family", FAMILIES)
def test_empty_plan_equals_model_output(tiny_models: dict[str, LoadedModel], family: str) -> None:
    loaded = tiny_models[family]
    prepared = _prepared(loaded)
    with torch.no_grad():
        reference = loaded.model(**prepared.inputs).logits
        with traced(loaded.model, Plan()):
            seamed = loaded.model(**prepared.inputs).logits
    torch.testing.assert_close(seamed, reference, atol=1e-5, rtol=0)


@pytest.mark.parametrize("family", FAMILIES)
@pytest.mark.parametrize("mode", ["strict", "paper"])
def test_no_attention_above_the_diagonal(
    tiny_models: dict[str, LoadedModel], family: str, mode: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    loaded = tiny_models[family]
    prepared = _prepared(loaded)
    adapter = loaded.adapter
    recorded: list[torch.Tensor] = []
    original = seam_module.explicit_attention

    def recording(*args, **kwargs):
        output, weights = original(*args, **kwargs)
        recorded.append(weights)
        return output, weights

    monkeypatch.setattr(seam_module, "explicit_attention", recording)
    layers = torch.ones(adapter.num_layers(loaded.model), dtype=torch.bool)
    plan = Plan(
        cross_layers=adapter.cross_layers(loaded.model),
        mode=mode,  # type: ignore[arg-type]
        knockout=_knockout(prepared.roles, Role.LAST, Role.LAST, layers),
        image_rows=prepared.image_rows[None],
    )
    with torch.no_grad(), traced(loaded.model, plan):
        loaded.model(**prepared.inputs)
    self_attention = [w for w in recorded if w.shape[-1] == w.shape[-2]]
    assert self_attention, "the explicit path never ran on a self-attention layer"
    for weights in self_attention:
        above = torch.triu(torch.ones(weights.shape[-2:], dtype=torch.bool), diagonal=1)
        assert float(weights[..., above].abs().max()) == 0.0


@pytest.mark.parametrize("family", FAMILIES)
def test_vision_tower_untouched_and_setting_restored(
    tiny_models: dict[str, LoadedModel], family: str
) -> None:
    model = tiny_models[family].model
    before_text = model.config.text_config._attn_implementation
    before_vision = model.config.vision_config._attn_implementation
    with traced(model, Plan()):
        assert model.config.text_config._attn_implementation == "vistrace"
        assert model.config.vision_config._attn_implementation == before_vision
    assert model.config.text_config._attn_implementation == before_text


@pytest.mark.parametrize("family", FAMILIES)
def test_setting_restored_after_exception(tiny_models: dict[str, LoadedModel], family: str) -> None:
    model = tiny_models[family].model
    before = model.config.text_config._attn_implementation
    hooks_before = sum(len(m._forward_pre_hooks) for m in model.modules())
    with pytest.raises(RuntimeError, match="boom"), traced(model, Plan()):
        raise RuntimeError("boom")
    assert model.config.text_config._attn_implementation == before
    assert sum(len(m._forward_pre_hooks) for m in model.modules()) == hooks_before


@pytest.mark.parametrize("family", FAMILIES)
def test_blocking_nothing_changes_nothing(tiny_models: dict[str, LoadedModel], family: str) -> None:
    loaded = tiny_models[family]
    prepared = _prepared(loaded)
    n_layers = loaded.adapter.num_layers(loaded.model)
    plan = Plan(
        cross_layers=loaded.adapter.cross_layers(loaded.model),
        knockout=_knockout(prepared.roles, Role.IMAGE, Role.LAST, torch.zeros(n_layers, dtype=torch.bool)),
    )
    with torch.no_grad():
        reference = loaded.model(**prepared.inputs).logits
        with traced(loaded.model, plan):
            seamed = loaded.model(**prepared.inputs).logits
    torch.testing.assert_close(seamed, reference, atol=1e-5, rtol=0)


@pytest.mark.parametrize("family", FAMILIES)
def test_blocking_changes_only_the_targeted_rows(tiny_models: dict[str, LoadedModel], family: str) -> None:
    loaded = tiny_models[family]
    prepared = _prepared(loaded)
    n_layers = loaded.adapter.num_layers(loaded.model)
    plan = Plan(
        cross_layers=loaded.adapter.cross_layers(loaded.model),
        knockout=_knockout(prepared.roles, Role.IMAGE, Role.LAST, torch.ones(n_layers, dtype=torch.bool)),
    )
    with torch.no_grad():
        reference = loaded.model(**prepared.inputs).logits
        with traced(loaded.model, plan):
            blocked = loaded.model(**prepared.inputs).logits
    torch.testing.assert_close(blocked[0, :-1], reference[0, :-1], atol=1e-5, rtol=0)
    assert float((blocked[0, -1] - reference[0, -1]).abs().max()) > 1e-3


def test_unknown_model_type_is_a_clear_error() -> None:
    with pytest.raises(UnsupportedModelError, match=r"supported: .*\bllava, .*\bmllama\b.*register_adapter"):
        get_adapter("qwen2_vl_unknown")
