"""A decoder layer whose mixing does not go through transformers' attention interface (a
linear-attention layer) cannot be blocked or read: check, knockouts and capture refuse the model
in one line naming the layers, instead of tracing it as if complete."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import torch

from vistrace.adapters import traced
from vistrace.capture.generate import capture
from vistrace.check import run_checks
from vistrace.hook import Plan, UnreachedLayersError
from vistrace.hook.traced import traced as traced_with
from vistrace.knockout.sweep import KnockoutRunner, Pathway
from vistrace.models.loading import LoadedModel, load

from ..conftest import scene_image

pytestmark = [pytest.mark.integration, pytest.mark.contract]

LINE = (
    "decoder layers {layers} of {total} do not reach vistrace's attention function (their mixing does "
    "not go through transformers' attention interface, e.g. linear-attention layers); vistrace cannot "
    "block or read them, so it does not trace this model"
)


class _TokenMixer(torch.nn.Module):
    """Stands in for a layer's attention without calling the attention interface (as linear
    attention does): a running mean over the positions."""

    def __init__(self, layer_idx: int):
        super().__init__()
        self.layer_idx = layer_idx

    def forward(self, hidden_states: torch.Tensor, **kwargs: Any) -> tuple[torch.Tensor, None]:
        steps = torch.arange(1, hidden_states.shape[1] + 1, device=hidden_states.device)[None, :, None]
        return hidden_states.cumsum(dim=1) / steps, None


@pytest.fixture
def mixed(tiny_dirs: dict[str, Path]) -> LoadedModel:
    """The tiny LLaVA with layers 1 and 2 (of 4) mixing outside the attention interface."""
    loaded = load(tiny_dirs["llava"])
    for index in (1, 2):
        loaded.model.get_decoder().layers[index].self_attn = _TokenMixer(index)
    return loaded


def test_check_stops_at_the_layers_the_seam_cannot_reach(mixed: LoadedModel) -> None:
    results = run_checks(mixed)
    line = next(r for r in results if r.name == "decoder layers reach the seam")
    assert not line.passed and line.detail == LINE.format(layers="1-2", total=4)
    assert not any(r.kind == "check" for r in results), "invariants ran on a model that cannot be traced"


@pytest.mark.parametrize("strategy", ["naive", "fast"])
def test_a_knockout_refuses_the_model(mixed: LoadedModel, strategy: str) -> None:
    prepared = mixed.adapter.prepare(mixed.model, mixed.processor, scene_image(), "What is red?")
    with pytest.raises(UnreachedLayersError, match=r"^decoder layers 1-2 of 4 do not reach"):
        KnockoutRunner(mixed).run(prepared, [5], [Pathway.parse("image_to_last")], 1, strategy)


def test_capture_refuses_the_model(mixed: LoadedModel) -> None:
    with pytest.raises(UnreachedLayersError, match=r"^decoder layers 1-2 of 4 do not reach"):
        capture(mixed, scene_image(), "What is red?", max_new_tokens=2)


def test_every_supported_layer_is_reached(tiny_models: dict[str, LoadedModel]) -> None:
    loaded = tiny_models["llava"]
    prepared = loaded.adapter.prepare(loaded.model, loaded.processor, scene_image(), "What is red?")
    with torch.no_grad(), traced(loaded.model, Plan()):
        loaded.model(**prepared.inputs)  # no error: every layer reached the seam


class _NoHooks:
    def install_hooks(self, model: Any) -> list[Any]:
        return []


def test_qwen3_5_linear_attention_layers_are_named() -> None:
    """Qwen3.5's Gated DeltaNet layers (three of every four) run outside the attention interface."""
    qwen3_5 = pytest.importorskip(
        "transformers.models.qwen3_5", reason="this transformers release has no Qwen3.5"
    )
    text = qwen3_5.Qwen3_5TextConfig(
        vocab_size=128, hidden_size=32, intermediate_size=64, num_hidden_layers=8, num_attention_heads=2,
        num_key_value_heads=1, head_dim=16, linear_num_key_heads=2, linear_num_value_heads=2,
        linear_key_head_dim=8, linear_value_head_dim=8,
    )  # fmt: skip
    assert text.layer_types == ["linear_attention"] * 3 + ["full_attention"] + ["linear_attention"] * 3 + [
        "full_attention"
    ]
    vision = {"depth": 1, "hidden_size": 32, "intermediate_size": 64, "num_heads": 2, "out_hidden_size": 32}
    config = qwen3_5.Qwen3_5Config(text_config=text.to_dict(), vision_config=vision)
    model = qwen3_5.Qwen3_5ForConditionalGeneration(config).eval()
    with (
        pytest.raises(UnreachedLayersError) as refused,
        torch.no_grad(),
        traced_with(model, Plan(), hooks=_NoHooks()),
    ):
        model(input_ids=torch.tensor([[1, 2, 3, 4, 5]]))
    assert str(refused.value) == LINE.format(layers="0-2, 4-6", total=8)
