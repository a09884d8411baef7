"""A model dispatched by accelerate (some decoder layers offloaded to disk, moved in by its hooks at
every call) gives the same knockout and capture numbers as the undispatched model."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from transformers import AutoModelForImageTextToText

from vistrace.capture.generate import capture
from vistrace.knockout.sweep import PAPER_PATHWAYS, KnockoutRunner, Pathway
from vistrace.models.loading import LoadedModel

from ..conftest import scene_image

pytestmark = [pytest.mark.integration, pytest.mark.contract]


def _dispatched(loaded: LoadedModel, offload: Path) -> LoadedModel:
    """`loaded`'s checkpoint with the upper half of its decoder layers offloaded to disk."""
    probe = AutoModelForImageTextToText.from_pretrained(loaded.path, device_map="meta")
    n_layers = loaded.adapter.num_layers(loaded.model)
    layers = next(
        name for name, module in probe.named_modules() if name.endswith("layers") and len(module) == n_layers
    )
    decoder = layers.rsplit(".", 1)[0]
    # Every module on the CPU except the decoder's layers, whose upper half goes to disk.
    device_map = {name: "cpu" for name, _ in probe.named_children() if name != "model"}
    device_map.update({f"model.{name}": "cpu" for name, _ in probe.model.named_children()})
    del device_map[decoder]
    device_map.update(
        {f"{decoder}.{name}": "cpu" for name, _ in probe.get_submodule(decoder).named_children()}
    )
    del device_map[layers]
    device_map.update({f"{layers}.{i}": "disk" if i >= n_layers // 2 else "cpu" for i in range(n_layers)})
    model = AutoModelForImageTextToText.from_pretrained(
        loaded.path, device_map=device_map, offload_folder=offload
    )
    model.eval()
    loaded.adapter.prepare_model(model)
    return LoadedModel(model, loaded.processor, loaded.adapter, loaded.path)


@pytest.mark.parametrize("family", ["llava", "mllama", "qwen2_5_vl"])
def test_dispatched_model_gives_the_same_numbers(
    family: str, tiny_models: dict[str, LoadedModel], tmp_path: Path
) -> None:
    loaded = tiny_models[family]
    dispatched = _dispatched(loaded, tmp_path / "offload")
    offloaded = [m for m in dispatched.model.modules() if getattr(m, "_hf_hook", None) is not None]
    assert offloaded, "accelerate installed no dispatch hooks"
    prepared = loaded.adapter.prepare(loaded.model, loaded.processor, scene_image(), "What is red?")
    pathways = [Pathway.parse(p) for p in PAPER_PATHWAYS]
    reference = KnockoutRunner(loaded).run(prepared, [57, 88], pathways, 3, "naive")
    for strategy in ("naive", "fast"):
        result = KnockoutRunner(dispatched).run(prepared, [57, 88], pathways, 3, strategy)
        assert abs(result.p_full - reference.p_full) <= 1e-6 * reference.p_full
        for pathway in pathways:
            actual = torch.tensor(result.probs[pathway.name], dtype=torch.float64)
            expected = torch.tensor(reference.probs[pathway.name], dtype=torch.float64)
            assert float((actual.log() - expected.log()).abs().max()) <= 1e-4, (strategy, pathway.name)
    plain = capture(loaded, scene_image(), "What is red?", max_new_tokens=3, dtype=torch.float32)
    moved = capture(dispatched, scene_image(), "What is red?", max_new_tokens=3, dtype=torch.float32)
    assert moved.output_ids == plain.output_ids
    torch.testing.assert_close(moved.image_attention, plain.image_attention, atol=1e-6, rtol=1e-5)
