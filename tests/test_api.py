"""The public API: loading by every kind of name, result objects that round-trip and draw on an ax."""

from __future__ import annotations

import shutil
from pathlib import Path

import matplotlib
import pytest
import torch

import vistrace
from vistrace.knockout.sweep import KnockoutRunner, Pathway
from vistrace.models.loading import LoadedModel

from .conftest import scene_image

pytestmark = [pytest.mark.integration, pytest.mark.contract]

matplotlib.use("Agg")


def test_import_has_no_side_effects() -> None:
    import subprocess
    import sys

    code = "import sys, vistrace; print('matplotlib' in sys.modules, 'transformers' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.split() == ["False", "False"]
    assert set(vistrace.__all__) >= {"load", "knockout_sweep", "attend", "volcano_loop", "register_adapter"}


def _hub_cache(root: Path, repo_id: str, checkpoint: Path) -> Path:
    """A Hugging Face cache laid out as huggingface_hub writes it, holding `checkpoint` as `repo_id`."""
    commit = "0123456789abcdef0123456789abcdef01234567"
    repo = root / f"models--{repo_id.replace('/', '--')}"
    shutil.copytree(checkpoint, repo / "snapshots" / commit)
    (repo / "refs").mkdir(parents=True)
    (repo / "refs" / "main").write_text(commit)
    return repo / "snapshots" / commit


def test_a_hub_id_loads_from_the_local_cache(
    tiny_dirs: dict[str, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    snapshot = _hub_cache(tmp_path / "hub", "meta-llama/Llama-3.2-11B-Vision-Instruct", tiny_dirs["mllama"])
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hub"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    model = vistrace.load("meta-llama/Llama-3.2-11B-Vision-Instruct")
    assert model.loaded.path == snapshot
    assert model.cross_attention_layers == (3, 8) and model.num_layers == 10
    with pytest.raises(FileNotFoundError, match="not in the local Hugging Face cache"):
        vistrace.load("someone/not-downloaded")


def test_vision_model_knows_its_structure(tiny_dirs: dict[str, Path]) -> None:
    model = vistrace.load(tiny_dirs["llava"])
    assert model.num_layers == 4 and model.cross_attention_layers == ()
    assert model.context_length == int(model.model.config.text_config.max_position_embeddings)
    assert model.eos_ids == {int(model.processor.tokenizer.eos_token_id)}
    eos = next(iter(model.eos_ids))
    assert model.answer_tokens([5, eos]) == [5]
    with pytest.raises(ValueError, match="no tokens"):
        model.answer_tokens("")


def test_knockout_sweep_equals_the_runner_and_round_trips(tiny_dirs: dict[str, Path], tmp_path: Path) -> None:
    model = vistrace.load(tiny_dirs["mllama"])
    prompt = model.prompt(scene_image(), "What is red?")
    sweep = vistrace.knockout_sweep(model, prompt, [57, 88], pathways=["image_to_last"], window=3)
    reference = KnockoutRunner(model.loaded).run(prompt, [57, 88], [Pathway.parse("image_to_last")], 3)
    assert sweep.probs.shape == (1, 10)
    assert sweep.probs[0].tolist() == reference.probs["image_to_last"]
    assert sweep.p_full == reference.p_full
    expected_change = (torch.tensor(reference.probs["image_to_last"]) - reference.p_full) / reference.p_full
    torch.testing.assert_close(sweep.change()[0], expected_change.double() * 100)
    frame = sweep.to_frame()
    assert list(frame.columns) == ["pathway", "layer", "probability", "change"] and len(frame) == 10
    sweep.save(tmp_path / "sweep")
    again = vistrace.KnockoutSweep.load(tmp_path / "sweep.json")
    assert again.probs.equal(sweep.probs) and again.pathways == sweep.pathways
    assert again.p_full == sweep.p_full
    assert again.mode == "strict" and again.window == 3 and again.cross_attention_layers == (3, 8)
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots()
    assert sweep.plot(ax=ax) is ax and len(ax.lines) >= 1
    plt.close(fig)
    with pytest.raises(ValueError, match="window"):
        vistrace.knockout_sweep(model, prompt, [57], window=0)


def test_knockout_sweeps_packed_equal_one_at_a_time(tiny_dirs: dict[str, Path]) -> None:
    model = vistrace.load(tiny_dirs["llava"])
    questions = ["What is red?", "Is there a blue square in the image?", "Color?"]
    samples = [
        (model.prompt(scene_image(), q), a) for q, a in zip(questions, [[57], [61], [57, 88]], strict=True)
    ]
    packed = list(vistrace.knockout_sweeps(model, samples, window=3, pack_memory=1.0))
    for sweep, (prompt, answer) in zip(packed, samples, strict=True):
        alone = vistrace.knockout_sweep(model, prompt, answer, window=3)
        assert sweep.pathways == alone.pathways and sweep.p_full == alone.p_full
        torch.testing.assert_close(sweep.probs, alone.probs, rtol=1e-5, atol=0)
    with pytest.raises(ValueError, match="window"):
        vistrace.knockout_sweeps(model, samples, window=0)  # at the call, not at the first sample
    with pytest.raises(ValueError, match="pack_memory"):
        vistrace.knockout_sweeps(model, samples, pack_memory=-1)
    with pytest.raises(ValueError, match="has no tokens to score"):
        list(vistrace.knockout_sweeps(model, [samples[0], (samples[1][0], [])], window=3))


def test_image_attention_round_trips_and_draws(tiny_dirs: dict[str, Path], tmp_path: Path) -> None:
    model = vistrace.load(tiny_dirs["llava"])
    image = scene_image()
    attention = vistrace.attend(model, image, "What is red?", max_new_tokens=3)
    tokens, layers, _heads, features = attention.attention.shape
    assert (layers, features) == (4, attention.stage.geometry.num_features)
    assert attention.map().shape == (features,) and attention.per_token().shape == (tokens,)
    attention.save(tmp_path / "attention")
    again = vistrace.ImageAttention.load(tmp_path / "attention", image)
    assert again.text == attention.text and torch.equal(again.attention, attention.attention)
    import matplotlib.pyplot as plt

    fig, (left, right) = plt.subplots(1, 2)
    assert again.plot_image(ax=left) is left and again.plot_text(ax=right) is right
    plt.close(fig)


def test_the_loaded_model_knows_its_context_and_end_tokens(tiny_models: dict[str, LoadedModel]) -> None:
    """One definition serves capture, eval, trace and the API; trace used `get_text_config()`."""
    for family, loaded in tiny_models.items():
        text_config = loaded.model.config.get_text_config()
        assert loaded.context_length == int(text_config.max_position_embeddings), family
        eos = loaded.model.generation_config.eos_token_id
        expected = (
            set(eos)
            if isinstance(eos, list)
            else {eos if eos is not None else loaded.processor.tokenizer.eos_token_id}
        )
        assert loaded.eos_ids == expected, family
        prompt = loaded.adapter.prepare(loaded.model, loaded.processor, scene_image(), "What is red?")
        moved = loaded.to_model(prompt.inputs)
        assert all(v.device == loaded.device for v in moved.values())
        assert {v.dtype for v in moved.values() if v.is_floating_point()} <= {loaded.model.dtype}
        generated = loaded.generate(moved, max_new_tokens=2, min_new_tokens=2, do_sample=False)
        assert generated.shape == (1, 2), family
