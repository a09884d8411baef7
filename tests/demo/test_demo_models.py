"""The shipped demo checkpoints and the script that trains them."""

from __future__ import annotations

import json
import struct
from dataclasses import asdict, replace
from pathlib import Path

import pytest
import torch

from vistrace.adapters import get_adapter
from vistrace.demo.models import EVAL_SEED, evaluate_answers
from vistrace.demo.train import build, main
from vistrace.demo.training_batches import Encoder, ExampleStream, collate
from vistrace.demo.training_config import DEFAULT_CONFIGS
from vistrace.demo.training_loss import (
    answer_loss,
    batch_loss,
    length_groups,
    reference_loss,
    shared_prefix_length,
)
from vistrace.demo.world import make_split, render
from vistrace.models import builtin
from vistrace.models.builtin import DEMO_FAMILIES, DemoModelMissingError, demo_model_dir
from vistrace.models.loading import load

pytestmark = [pytest.mark.integration]

torch.set_num_threads(2)

MAX_WEIGHTS_BYTES = 5 * 1024 * 1024
ACCURACY_MARGIN = 0.1


def _safetensors_dtypes(path: Path) -> set[str]:
    with path.open("rb") as handle:
        (header_size,) = struct.unpack("<Q", handle.read(8))
        header = json.loads(handle.read(header_size))
    return {entry["dtype"] for name, entry in header.items() if name != "__metadata__"}


@pytest.mark.parametrize("family", DEMO_FAMILIES)
def test_shipped_model_is_small_float16_checkpoint(family: str) -> None:
    directory = demo_model_dir(family)
    weights = directory / "model.safetensors"
    assert weights.stat().st_size < MAX_WEIGHTS_BYTES
    assert _safetensors_dtypes(weights) == {"F16"}
    for name in ("config.json", "tokenizer.json", "processor_config.json", "metrics.json"):
        assert (directory / name).is_file(), name


@pytest.mark.parametrize("family", DEMO_FAMILIES)
def test_shipped_model_reaches_reported_accuracy(family: str) -> None:
    directory = demo_model_dir(family)
    loaded = load(directory)
    assert loaded.adapter.model_type == family
    reported = json.loads((directory / "metrics.json").read_text(encoding="utf-8"))["held_out"]
    samples = make_split(14, EVAL_SEED)[:40]
    result = evaluate_answers(loaded.model, loaded.processor, loaded.adapter, samples)
    assert result["questions"] == 40
    assert result["accuracy"] >= reported["accuracy"] - ACCURACY_MARGIN


@pytest.mark.parametrize("family", DEMO_FAMILIES)
def test_shipped_model_was_trained_with_the_default_config(family: str) -> None:
    metrics = json.loads((demo_model_dir(family) / "metrics.json").read_text(encoding="utf-8"))
    assert metrics["config"] == json.loads(json.dumps(asdict(DEFAULT_CONFIGS[family])))


def test_demo_model_dir_names_the_training_command(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setattr(builtin, "MODELS_DIR", tmp_path)
    with pytest.raises(DemoModelMissingError, match=r"python -m vistrace\.demo\.train --family mllama"):
        demo_model_dir("mllama")
    with pytest.raises(ValueError, match="unknown demo family"):
        demo_model_dir("qwen2_vl")


@pytest.mark.parametrize("family", DEMO_FAMILIES)
def test_training_inputs_equal_adapter_prepare(family: str) -> None:
    config = replace(DEFAULT_CONFIGS[family], steps=1, train_scenes=4, volcano_fraction=0.5, volcano_start=0)
    model, processor = build(config)
    adapter = get_adapter(model)
    encoder = Encoder(processor, adapter)
    samples = make_split(3, 5)
    for sample, other in zip(samples, samples[::-1], strict=True):
        image = render(sample.scene)
        prepared = adapter.prepare(model, processor, image, sample.qa.question)
        for primer in (image, render(other.scene)):
            encoder.encode(primer, sample.qa.question, sample.qa.answer)
            example = encoder.encode(image, sample.qa.question, sample.qa.answer)
            assert example.inputs.keys() == prepared.inputs.keys()
            for key, value in prepared.inputs.items():
                assert torch.equal(example.inputs[key], value), key
    examples = ExampleStream(config, encoder).batch(0)
    batch, labels = collate(examples, int(processor.tokenizer.pad_token_id))
    eos = int(processor.tokenizer.eos_token_id)
    for row, example in enumerate(examples):
        supervised = labels[row][labels[row] != -100].tolist()
        assert supervised == example.target_ids
        assert supervised[-1] == eos
        start = example.inputs["input_ids"].shape[1]
        assert batch["input_ids"][row, start : start + len(supervised)].tolist() == supervised


def test_shared_prefix_loss_equals_full_forward() -> None:
    config = replace(
        DEFAULT_CONFIGS["llava"], train_scenes=6, volcano_fraction=0.5, volcano_start=0, batch_size=6
    )
    model, processor = build(config)
    batch, labels = collate(ExampleStream(config, Encoder(processor, get_adapter(model))).batch(0), 0)
    assert shared_prefix_length(model, batch["input_ids"]) > 10
    shared = answer_loss(model, batch, labels)
    shared.backward()
    shared_grads = {name: p.grad.clone() for name, p in model.named_parameters() if p.grad is not None}
    model.zero_grad()
    logits = model(**batch).logits[:, :-1]
    full = torch.nn.functional.cross_entropy(logits.flatten(0, 1), labels[:, 1:].flatten())
    full.backward()
    assert torch.allclose(shared, full, atol=1e-6)
    for name, param in model.named_parameters():
        if param.grad is not None:
            assert torch.allclose(shared_grads[name], param.grad, atol=1e-5), name


@pytest.mark.parametrize("family", DEMO_FAMILIES)
def test_grouped_loss_equals_one_padded_batch(family: str) -> None:
    config = replace(
        DEFAULT_CONFIGS[family], train_scenes=32, volcano_fraction=0.5, volcano_start=0, batch_size=32
    )
    model, processor = build(config)
    model.set_attn_implementation("eager")
    examples = ExampleStream(config, Encoder(processor, get_adapter(model))).batch(0)
    lengths = [ex.inputs["input_ids"].shape[1] + len(ex.target_ids) for ex in examples]
    assert len(length_groups(lengths)) > 1, "the batch should split into groups"
    pad = int(processor.tokenizer.pad_token_id)
    grouped = batch_loss(model, examples, pad)
    grouped.backward()
    grouped_grads = {name: p.grad.clone() for name, p in model.named_parameters() if p.grad is not None}
    model.zero_grad()
    model.set_attn_implementation("sdpa")
    reference = reference_loss(model, examples, pad)
    reference.backward()
    assert torch.allclose(grouped, reference, atol=1e-6)
    assert grouped_grads.keys() == {name for name, p in model.named_parameters() if p.grad is not None}
    for name, param in model.named_parameters():
        if param.grad is not None:
            assert torch.allclose(grouped_grads[name], param.grad, atol=1e-5), name


def test_length_groups_cover_every_row_and_cut_padding() -> None:
    lengths = [20, 98, 22, 97, 21, 98, 60, 22]
    groups = length_groups(lengths, overhead=0)
    assert sorted(i for group in groups for i in group) == list(range(len(lengths)))
    padded = sum(len(group) * max(lengths[i] for i in group) for group in groups)
    assert padded < len(lengths) * max(lengths)
    assert all(max(lengths[i] for i in group) - min(lengths[i] for i in group) <= 2 for group in groups)
    assert length_groups([50] * 4) == [[0, 1, 2, 3]]
    assert length_groups([10, 90], overhead=10_000) == [[0, 1]]


@pytest.mark.parametrize("family", DEMO_FAMILIES)
def test_training_script_runs(family: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / family
    argv = ["--family", family, "--out", str(out), "--steps", "2", "--batch-size", "4"]
    argv += ["--vision-steps", "2", "--train-scenes", "8", "--eval-scenes", "2", "--volcano-eval", "1"]
    argv += ["--no-progress"]
    assert main(argv) == 0
    assert "held-out questions" in capsys.readouterr().out
    metrics = json.loads((out / "metrics.json").read_text(encoding="utf-8"))
    assert metrics["config"]["steps"] == 2
    assert metrics["held_out"]["questions"] == 6
    assert _safetensors_dtypes(out / "model.safetensors") == {"F16"}
    loaded = load(out)
    assert loaded.adapter.model_type == family


def test_training_is_reproducible(tmp_path: Path) -> None:
    argv = ["--family", "llava", "--steps", "3", "--batch-size", "4", "--vision-steps", "2"]
    argv += ["--train-scenes", "8", "--eval-scenes", "1", "--volcano-eval", "0", "--no-progress"]
    for run in ("a", "b"):
        assert main([*argv, "--out", str(tmp_path / run)]) == 0
    first, second = ((tmp_path / run / "model.safetensors").read_bytes() for run in ("a", "b"))
    assert first == second
