"""Run configs: checked on construction with one line naming the option, and recorded in config.json
with the keys and values earlier releases wrote, so that their run folders resume."""

from __future__ import annotations

import dataclasses
import json
import re
from pathlib import Path
from typing import Any

import pytest
import torch
import transformers
from typer.testing import CliRunner

import vistrace
from vistrace.cli import app
from vistrace.models.loading import LoadedModel
from vistrace.runs.attend import run_volcano
from vistrace.runs.config import AttendConfig, EvalConfig, TraceConfig
from vistrace.runs.evaluate import evaluate
from vistrace.runs.trace import trace

from ..conftest import scene_image


def _folder(root: Path) -> Path:
    """A data folder with one image and one record per workflow (trace, eval, attend)."""
    root.mkdir(parents=True, exist_ok=True)
    scene_image().save(root / "scene.png")
    records = {
        "trace.jsonl": {
            "id": "a",
            "image": "scene.png",
            "prompt": "What color is the block?",
            "answer": "red",
        },
        "eval.jsonl": {"id": 1, "image": "scene.png", "question": "What color?", "answers": ["red"]},
        "attend.jsonl": {"image_id": "s", "image_src": "scene.png", "question": "What is red?"},
    }
    for name, record in records.items():
        (root / name).write_text(json.dumps(record) + "\n", encoding="utf-8")
    return root


def _write_config(run: Path, config: dict[str, Any]) -> None:
    run.mkdir(parents=True)
    (run / "config.json").write_text(json.dumps(config, indent=1) + "\n", encoding="utf-8")


def _read_config(run: Path) -> dict[str, Any]:
    return dict(json.loads((run / "config.json").read_text(encoding="utf-8")))


# ---- validation: one line naming the option -------------------------------------------------------


@pytest.mark.unit
@pytest.mark.parametrize(
    ("changes", "expected"),
    [
        ({"ks": (2,)}, "--k 2: a window size is a positive odd integer"),
        ({"ks": ()}, "--k is empty"),
        ({"pathways": ()}, "--pathways is empty"),
        ({"pathways": ("nonsense",)}, "--pathways:"),
        ({"mode": "loose"}, "--mode 'loose': choose strict or paper"),
        ({"strategy": "quick"}, "--strategy 'quick'"),
        ({"temperature": 0.0}, "--temperature 0.0: must be a positive number"),
        ({"limit": -1}, "--limit -1: must be 0 or more"),
        ({"data": Path("no-such.jsonl")}, "--data no-such.jsonl: no such file"),
        ({"out": "taken"}, "is a file, not a folder"),
        ({"pack_memory": -1.0}, "--pack-memory -1.0: GiB, 0 or more"),
        ({"pack_memory": float("nan")}, "--pack-memory nan"),
        ({"strategy": "naive", "pack_memory": 2.0}, "--pack-memory packs the fast strategy's re-runs"),
    ],
)
def test_trace_config_names_the_option(tmp_path: Path, changes: dict[str, Any], expected: str) -> None:
    data = _folder(tmp_path / "data") / "trace.jsonl"
    (tmp_path / "taken").write_text("x")
    if changes.get("out") == "taken":
        changes = {"out": tmp_path / "taken"}
    with pytest.raises(ValueError, match=re.escape(expected)):
        TraceConfig(**{"data": data, "out": tmp_path / "run", **changes})


@pytest.mark.unit
@pytest.mark.parametrize(
    ("changes", "expected"),
    [
        (
            {"dataset": "flickr30k"},
            "--dataset 'flickr30k': choose one of vqav2, visual7w, docvqa, jsonl, json, hf, mmhal, textvqa, "
            "chartqa, coco",
        ),
        ({"batch_size": 0}, "--batch-size 0: must be at least 1"),
        ({"max_new_tokens": 0}, "--max-new-tokens 0: must be at least 1"),
        ({"limit": -2}, "--limit -2: must be 0 or more"),
    ],
)
def test_eval_config_names_the_option(tmp_path: Path, changes: dict[str, Any], expected: str) -> None:
    with pytest.raises(ValueError, match=re.escape(expected)):
        EvalConfig(**{"dataset": "jsonl", "out": tmp_path / "run", **changes})


@pytest.mark.unit
def test_attend_config_names_the_option(tmp_path: Path) -> None:
    data = _folder(tmp_path / "data") / "attend.jsonl"
    with pytest.raises(ValueError, match="--max-new-tokens 0: must be at least 1"):
        AttendConfig(input=data, out=tmp_path / "run", max_new_tokens=0)
    with pytest.raises(ValueError, match=r"--input .*gone\.json: no such file"):
        AttendConfig(input=tmp_path / "gone.json", out=tmp_path / "run")


@pytest.mark.unit
def test_configs_are_frozen_and_normalised(tmp_path: Path) -> None:
    data = _folder(tmp_path / "data")
    loose: dict[str, Any] = {"data": str(data / "trace.jsonl"), "out": str(tmp_path / "run")}
    config = TraceConfig(**loose, pathways="image_to_last", ks=9)  # type: ignore[arg-type]
    assert (config.pathways, config.ks, config.data) == (("image_to_last",), (9,), data / "trace.jsonl")
    assert config.softmax_temperature == 1.0
    assert TraceConfig(data=data / "trace.jsonl", out=tmp_path, mode="paper").softmax_temperature == 0.6
    with pytest.raises(dataclasses.FrozenInstanceError):
        config.ks = (3,)  # type: ignore[misc]
    with pytest.raises(ValueError, match="--k 9: larger than the model's 4 layers"):
        config.check_model(4)
    assert EvalConfig(dataset="vqav2", out=tmp_path).new_tokens == 25
    assert EvalConfig(dataset="jsonl", out=tmp_path).new_tokens == 512
    assert EvalConfig(dataset="jsonl", out=tmp_path, max_new_tokens=7).new_tokens == 7
    with pytest.raises(ValueError, match="--annotations is required"):
        EvalConfig(dataset="jsonl", out=tmp_path).read()
    assert AttendConfig(input=None, out=tmp_path, instance_idx=[3, 1]).instance_idx == (3, 1)  # type: ignore[arg-type]


# ---- config.json: the layout of earlier releases resumes ------------------------------------------


@pytest.mark.integration
def test_a_trace_folder_of_the_earlier_layout_resumes(
    tiny_models: dict[str, LoadedModel], tiny_dirs: dict[str, Path], tmp_path: Path
) -> None:
    data = _folder(tmp_path / "data") / "trace.jsonl"
    earlier = {
        "command": "trace",
        "model": str(tiny_dirs["llava"].resolve()),
        "dtype": "float32",
        "mode": "strict",
        "temperature": 1.0,
        "data": str(data.resolve()),
        "images": None,
    }
    fresh = tmp_path / "fresh"
    trace(tiny_models["llava"], data, fresh, pathways=["image_to_last"], ks=[1])
    assert list(_read_config(fresh).items()) == list(earlier.items())
    run = tmp_path / "run"
    _write_config(run, earlier)
    first = trace(tiny_models["llava"], data, run, pathways=["image_to_last"], ks=[1])
    assert (first.traced, first.skipped) == (1, 0)
    args = ["trace", "--model", str(tiny_dirs["llava"]), "--data", str(data), "--out", str(run)]
    result = CliRunner().invoke(app, [*args, "--pathways", "image_to_last", "--k", "1"])
    assert result.exit_code == 0, result.output
    assert "0 traced, 1 already done" in result.output
    assert _read_config(run) == earlier


@pytest.mark.integration
def test_an_eval_folder_of_the_earlier_layout_resumes(
    tiny_models: dict[str, LoadedModel], tiny_dirs: dict[str, Path], tmp_path: Path
) -> None:
    data = _folder(tmp_path / "data") / "eval.jsonl"
    earlier = {
        "command": "eval",
        "model": str(tiny_dirs["llava"].resolve()),
        "model_type": "llava",
        "dtype": "float32",
        "dataset": "jsonl",
        "seed": 42,
        "batch_size": 8,
        "max_new_tokens": 2,
        "greedy": True,
        "versions": {
            "transformers": transformers.__version__,
            "torch": torch.__version__,
            "vistrace": vistrace.__version__,
        },
        "input": str(data.resolve()),
    }
    examples = EvalConfig(dataset="jsonl", out=tmp_path, annotations=data).read().examples
    fresh = tmp_path / "fresh"
    evaluate(tiny_models["llava"], examples, fresh, dataset="jsonl", max_new_tokens=2, source=data)
    assert list(_read_config(fresh).items()) == list(earlier.items())
    run = tmp_path / "run"
    _write_config(run, earlier)
    args = ["eval", "--model", str(tiny_dirs["llava"]), "--dataset", "jsonl", "--annotations", str(data)]
    result = CliRunner().invoke(app, [*args, "--out", str(run), "--max-new-tokens", "2"])
    assert result.exit_code == 0, result.output
    assert "1 generated, 0 resumed" in result.output
    again = CliRunner().invoke(app, [*args, "--out", str(run), "--max-new-tokens", "2"])
    assert again.exit_code == 0 and "0 generated, 1 resumed" in again.output, again.output
    assert _read_config(run) == earlier


@pytest.mark.integration
def test_an_attend_folder_of_the_earlier_layout_resumes(
    tiny_models: dict[str, LoadedModel], tiny_dirs: dict[str, Path], tmp_path: Path
) -> None:
    data = _folder(tmp_path / "data") / "attend.jsonl"
    earlier = {
        "command": "attend",
        "model": str(tiny_dirs["llava"]),
        "dtype": "float32",
        "input": str(data.resolve()),
        "volcano": False,
        "engineered": False,
        "sample": False,
        "temperature": None,
        "max_new_tokens": 2,
        "max_rounds": 0,
        "seed": 0,
    }
    fresh = tmp_path / "fresh"
    run_volcano(tiny_models["llava"], data, fresh, volcano=False, max_new_tokens=2)
    assert list(_read_config(fresh).items()) == list(earlier.items())
    run = tmp_path / "run"
    _write_config(run, earlier)
    args = ["attend", "--model", str(tiny_dirs["llava"]), "--input", str(data), "--out", str(run)]
    result = CliRunner().invoke(app, [*args, "--no-volcano", "--max-new-tokens", "2"])
    assert result.exit_code == 0, result.output
    log = json.loads((run / "log.json").read_text(encoding="utf-8"))
    assert log["config"] == {k: v for k, v in earlier.items() if k != "command"}
    assert [entry.get("skipped") for entry in log["entries"]] == [None]
    assert _read_config(run) == earlier
