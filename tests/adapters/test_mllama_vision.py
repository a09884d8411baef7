"""The Mllama vision tower against a transformers 4.51.2 reference.

``tests/data/mllama_vision_reference.*`` is written by ``scripts/make_mllama_vision_reference.py``
under transformers 4.51.2 (intermediate features taken at each layer's input, as in Meta's
reference implementation).
"""

from __future__ import annotations

import functools
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import torch
from safetensors.torch import load_file
from transformers.models.mllama.configuration_mllama import MllamaConfig, MllamaVisionConfig
from transformers.models.mllama.modeling_mllama import MllamaForConditionalGeneration, MllamaVisionModel

from vistrace.adapters.mllama_vision import (
    detect_vision_convention,
    find_vision_model,
    use_reference_vision_features,
    vision_convention_report,
)

pytestmark = [pytest.mark.integration, pytest.mark.contract]

DATA = Path(__file__).resolve().parents[1] / "data"
ATOL = 1e-5


@functools.cache
def _reference() -> tuple[dict[str, Any], dict[str, torch.Tensor]]:
    sidecar = json.loads((DATA / "mllama_vision_reference.json").read_text())
    tensors = load_file(str(DATA / "mllama_vision_reference.safetensors"))
    return sidecar, tensors


def _section(prefix: str) -> dict[str, torch.Tensor]:
    _, tensors = _reference()
    return {k.removeprefix(prefix): v for k, v in tensors.items() if k.startswith(prefix)}


def _vision_config() -> MllamaVisionConfig:
    sidecar, _ = _reference()
    config = MllamaVisionConfig(**sidecar["config"])
    config._attn_implementation = sidecar["attn_implementation"]
    return config


def _run(model: MllamaVisionModel) -> torch.Tensor:
    with torch.no_grad():
        return model(**_section("inputs.")).last_hidden_state


def _max_diff_to_reference(model: MllamaVisionModel) -> float:
    expected = _reference()[1]["outputs.last_hidden_state"]
    return (_run(model) - expected).abs().max().item()


@pytest.fixture
def vision_model() -> Iterator[MllamaVisionModel]:
    """A fresh 5.x ``MllamaVisionModel`` holding the reference weights."""
    model = MllamaVisionModel(_vision_config()).eval()
    result = model.load_state_dict(_section("model."), strict=False)
    assert not result.missing_keys and not result.unexpected_keys, result
    yield model
    for handle_id in list(model.transformer._forward_hooks):
        del model.transformer._forward_hooks[handle_id]


def test_reference_was_made_with_transformers_4_51_2() -> None:
    sidecar, tensors = _reference()
    assert sidecar["transformers_version"] == "4.51.2"
    assert list(tensors["outputs.last_hidden_state"].shape) == sidecar["last_hidden_state_shape"]


def test_detects_layer_output_convention() -> None:
    assert detect_vision_convention() == "layer_output"


def test_reference_weights_load_completely(vision_model: MllamaVisionModel) -> None:
    loaded = _section("model.")
    state = vision_model.state_dict()
    assert set(state) == set(loaded)
    assert all(torch.equal(state[k], v) for k, v in loaded.items())
    gates = [v for k, v in loaded.items() if k.endswith(("gate", "gate_attn", "gate_ffn"))]
    assert gates and all(bool((g.abs() > 0.1).all()) for g in gates)


def test_unfixed_output_differs_from_reference(vision_model: MllamaVisionModel) -> None:
    assert _max_diff_to_reference(vision_model) > 1e-2


def test_fixed_output_matches_reference(vision_model: MllamaVisionModel) -> None:
    handle = use_reference_vision_features(vision_model)
    assert handle is not None
    assert _max_diff_to_reference(vision_model) <= ATOL


def test_fix_is_idempotent(vision_model: MllamaVisionModel) -> None:
    first = use_reference_vision_features(vision_model)
    second = use_reference_vision_features(vision_model)
    assert first is second
    assert len(vision_model.transformer._forward_hooks) == 1
    assert _max_diff_to_reference(vision_model) <= ATOL


def test_removing_handle_restores_installed_behaviour(vision_model: MllamaVisionModel) -> None:
    unfixed = _run(vision_model)
    handle = use_reference_vision_features(vision_model)
    assert handle is not None
    handle.remove()
    assert torch.equal(_run(vision_model), unfixed)
    assert not vision_convention_report(vision_model)["fix_active"]
    again = use_reference_vision_features(vision_model)
    assert again is not None and again is not handle
    assert _max_diff_to_reference(vision_model) <= ATOL


def test_global_encoder_is_left_alone(vision_model: MllamaVisionModel) -> None:
    use_reference_vision_features(vision_model)
    assert not vision_model.global_transformer._forward_hooks


def test_report(vision_model: MllamaVisionModel) -> None:
    before = vision_convention_report(vision_model)
    assert before["installed_convention"] == "layer_output"
    assert before["reference_convention"] == "layer_input"
    assert before["fix_needed"] and not before["fix_active"] and not before["matches_reference"]
    assert before["intermediate_layers_indices"] == [0, 2, 3]
    use_reference_vision_features(vision_model)
    after = vision_convention_report(vision_model)
    assert after["fix_active"] and after["matches_reference"]


def test_full_model_is_accepted() -> None:
    config = MllamaConfig(
        vision_config=_vision_config().to_dict(),
        text_config={
            "vocab_size": 64,
            "hidden_size": 16,
            "num_hidden_layers": 2,
            "num_attention_heads": 2,
            "num_key_value_heads": 1,
            "intermediate_size": 32,
            "cross_attention_layers": [1],
            "pad_token_id": 0,
            "bos_token_id": 1,
            "eos_token_id": 2,
        },
    )
    model = MllamaForConditionalGeneration(config)
    vision = find_vision_model(model)
    assert find_vision_model(model.model) is vision
    handle = use_reference_vision_features(model)
    assert handle is not None
    assert use_reference_vision_features(model.model) is handle
    assert vision_convention_report(model)["fix_active"]
    handle.remove()


def test_rejects_other_models() -> None:
    with pytest.raises(TypeError):
        find_vision_model(torch.nn.Linear(2, 2))
