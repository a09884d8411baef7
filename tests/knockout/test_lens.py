"""The answer probability after every layer: its last layer is the model's own, and it is read
through the family's finisher for every family."""

from __future__ import annotations

import pytest
import torch

from vistrace.knockout.lens import answer_probability_by_layer
from vistrace.knockout.sweep import KnockoutRunner
from vistrace.models.loading import LoadedModel
from vistrace.models.tiny import FAMILIES

from ..conftest import scene_image

pytestmark = [pytest.mark.integration, pytest.mark.contract]


@pytest.mark.parametrize("family", FAMILIES)
def test_the_last_layer_gives_the_models_answer_probability(
    tiny_models: dict[str, LoadedModel], family: str
) -> None:
    loaded = tiny_models[family]
    prepared = loaded.adapter.prepare(loaded.model, loaded.processor, scene_image(), "What is red?")
    answer = [57, 88, 101]
    by_layer = answer_probability_by_layer(loaded, prepared, answer)
    assert by_layer.shape == (loaded.adapter.num_layers(loaded.model), 3)
    reference = KnockoutRunner(loaded).run(prepared, answer, [], 1, "naive")
    torch.testing.assert_close(
        by_layer[-1], torch.tensor(reference.p_full_tokens, dtype=torch.float64), rtol=1e-5, atol=1e-9
    )
    # Earlier layers read something else (the lens is not a copy of the last row).
    assert not torch.allclose(by_layer[0], by_layer[-1])
