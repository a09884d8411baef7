"""`vistrace attend` and the attention figures through the CLI, on the tiny checkpoints of both families."""

from __future__ import annotations

import itertools
import json
import logging
from pathlib import Path
from typing import Any

import pytest
import torch
from safetensors import safe_open
from typer.testing import CliRunner

import vistrace.runs.attend as attend_module
import vistrace.volcano.loop as volcano_loop
from vistrace.cli import app
from vistrace.models.loading import LoadedModel
from vistrace.models.tiny import FAMILIES
from vistrace.plots.attention_maps import strip_mark

from ..conftest import scene_image

pytestmark = [pytest.mark.integration]

MAX_NEW_TOKENS = 3
LOG_KEYS = {
    "image_id",
    "image_src",
    "question",
    "gold_answer",
    "outputs",
    "feedback",
    "revision",
    "stop_iter",
}
STAGE_KEYS = {"prompt_text", "input_ids", "output_ids", "output_tokens", "text", "layers", "geometry"}
IMAGE_SIZES = {0: (48, 32), 2: (32, 48)}


def _input_file(folder: Path) -> Path:
    """Three instances: a wide image (gold_answer), a missing image, a tall image (gt_answer)."""
    folder.mkdir(parents=True, exist_ok=True)
    scene_image(*IMAGE_SIZES[0]).save(folder / "wide.png")
    scene_image(*IMAGE_SIZES[2]).save(folder / "tall.png")
    records = [
        {"image_id": "wide", "image_src": "wide.png", "question": "What is red?", "gold_answer": "block"},
        {"image_id": "gone", "image_src": "missing.png", "question": "Is it there?", "gold_answer": "no"},
        {"image_id": "tall", "image_src": "tall.png", "question": "What shape?", "gt_answer": "square"},
    ]
    path = folder / "input.json"
    path.write_text(json.dumps(records), encoding="utf-8")
    return path


def _invoke(*args: str, code: int = 0) -> Any:
    result = CliRunner().invoke(app, list(args))
    assert result.exit_code == code, f"vistrace {' '.join(args)}:\n{result.output}\n{result.exception!r}"
    return result


def _error(result: Any) -> str:
    """The one `Error:` line the CLI ends with (stderr also holds progress bars)."""
    assert "Traceback" not in result.output
    return str(result.stderr.splitlines()[-1])


def _attend(model: Path, source: Path, run: Path, *extra: str) -> None:
    out = _invoke(
        "attend", "--model", str(model), "--input", str(source), "--out", str(run),
        "--max-new-tokens", str(MAX_NEW_TOKENS), *extra,
    ).stdout  # fmt: skip
    assert out.strip() == f"log: {run / 'log.json'}"


def _skip_lines(caplog: pytest.LogCaptureFixture) -> list[str]:
    """The warnings of a run, less the loader's note on a processor loaded without torchvision."""
    return [
        r.getMessage()
        for r in caplog.records
        if r.levelno >= logging.WARNING and "torchvision is not installed" not in r.getMessage()
    ]


def _check_missing_image_line(lines: list[str], source: Path) -> None:
    assert len(lines) == 1, lines
    assert lines[0] == (
        f"skipped instance 1: image 'missing.png' of 'gone': no such file ({source.parent / 'missing.png'})"
    )


def _check_run(run: Path, loaded: LoadedModel, volcano: bool) -> dict[int, dict[str, Any]]:
    """Check log.json and every instance folder against the format; return the entries by index."""
    log = json.loads((run / "log.json").read_text())
    assert log["config"]["volcano"] is volcano and log["config"]["max_new_tokens"] == MAX_NEW_TOKENS
    entries = {entry["index"]: entry for entry in log["entries"]}
    assert sorted(entries) == [0, 1, 2]
    assert "no such file" in entries[1]["skipped"] and not list(run.glob("1_*"))
    assert entries[0]["gold_answer"] == "block" and entries[2]["gold_answer"] == "square"
    model = loaded.model
    layers = sorted(loaded.adapter.image_layers(model))
    text_config = getattr(model.config, "text_config", None) or model.config
    heads = int(text_config.num_attention_heads)
    for index in (0, 2):
        entry = entries[index]
        assert set(entry) >= LOG_KEYS and "adopted_round" in entry and "skipped" not in entry
        rounds = entry["stop_iter"]
        assert (1 <= rounds <= 3) if volcano else rounds == 0
        assert len(entry["feedback"]) == len(entry["revision"]) == rounds
        adopted = entry["adopted_round"]
        assert len(entry["outputs"]) == 1 + sum(1 for c in entry["choices"] if c == "B")
        assert adopted is None or entry["outputs"][-1] == entry["revision"][adopted - 1]
        expected = ["initial"] + [
            f"{kind}_{r}" for r in range(1, rounds + 1) for kind in ("feedback", "revision")
        ]
        directory = run / entry["dir"]
        assert directory.name == f"{index}_{entry['image_id']}"
        record = json.loads((directory / "attention.json").read_text())
        assert list(record["stages"]) == expected and record["log"] == entry
        stages = record["stages"]
        assert entry["question"] in stages["initial"]["prompt_text"]
        assert stages["initial"]["text"] == entry["outputs"][0]
        for r in range(1, rounds + 1):
            assert stages[f"feedback_{r}"]["text"] == entry["feedback"][r - 1]
            assert stages[f"revision_{r}"]["text"] == entry["revision"][r - 1]
            critiqued = entry["outputs"][0] if r == 1 else entry["revision"][r - 2]
            assert f"{critiqued}" in stages[f"feedback_{r}"]["prompt_text"]
        with safe_open(str(directory / "attention.safetensors"), framework="pt") as handle:
            assert sorted(handle.keys()) == sorted(f"{stage}.image_attention" for stage in expected)
            for stage in expected:
                data = stages[stage]
                assert set(data) >= STAGE_KEYS
                assert data["layers"] == layers
                assert tuple(data["geometry"]["image_size"]) == IMAGE_SIZES[index]
                assert len(data["output_ids"]) == len(data["output_tokens"]) <= MAX_NEW_TOKENS
                assert data["input_ids"] and all(isinstance(i, int) for i in data["input_ids"])
                tensor = handle.get_tensor(f"{stage}.image_attention")
                assert tensor.dtype == torch.float16
                features = len(data["geometry"]["kinds"])
                assert tuple(tensor.shape) == (len(data["output_ids"]), len(layers), heads, features)
                assert torch.isfinite(tensor).all() and float(tensor.min()) >= 0
                assert float(tensor.float().sum(dim=-1).max()) <= 1.01  # a share of one softmax row
    return entries


def _written(out: str, figures: Path, stem: str, suffixes: tuple[str, ...]) -> None:
    for suffix in suffixes:
        assert (figures / f"{stem}{suffix}").stat().st_size > 0, f"{stem}{suffix} missing"
    assert out.strip().endswith("files written")


def _span(tokens: list[str], size: int) -> str:
    """The first run of `size` output tokens that can be written on the command line."""
    usable = [bool(strip_mark(t)) and "," not in t and not any(c.isspace() for c in t) for t in tokens]
    for start in range(len(tokens) - size + 1):
        if all(usable[start : start + size]):
            return ",".join(strip_mark(t) for t in tokens[start : start + size])
    raise AssertionError(f"no usable span of {size} tokens in {tokens}")


@pytest.mark.parametrize("family", FAMILIES)
def test_attend_volcano_resume_and_figures(
    family: str,
    tiny_dirs: dict[str, Path],
    tiny_models: dict[str, LoadedModel],
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    source, run = _input_file(tmp_path / "data"), tmp_path / "run"
    with caplog.at_level(logging.WARNING):
        _attend(tiny_dirs[family], source, run)
    _check_missing_image_line(_skip_lines(caplog), source)
    entries = _check_run(run, tiny_models[family], volcano=True)

    finished = {p: p.stat().st_mtime_ns for p in run.glob("*_*/*")}
    log_text = (run / "log.json").read_text()

    def must_not_run(*args: object, **kwargs: object) -> None:
        raise AssertionError("a finished instance was run again")

    monkeypatch.setattr(attend_module, "volcano_instance", must_not_run)
    caplog.clear()
    with caplog.at_level(logging.WARNING):
        _attend(tiny_dirs[family], source, run)
    _check_missing_image_line(_skip_lines(caplog), source)  # skipped instances are retried
    assert {p: p.stat().st_mtime_ns for p in run.glob("*_*/*")} == finished
    assert (run / "log.json").read_text() == log_text
    result = _invoke(
        "attend", "--model", str(tiny_dirs[family]), "--input", str(source), "--out", str(run),
        "--max-new-tokens", str(MAX_NEW_TOKENS), "--no-volcano", code=1,
    )  # fmt: skip
    assert _error(result).startswith(f"Error: {run}: the results there were made with other settings")
    monkeypatch.undo()

    figures = run / "figures"
    feedback = f"feedback_{entries[2]['adopted_round'] or 1}"
    out = _invoke("plot", "text-heatmap", str(run), "--instance-idx", "2").stdout
    _written(out, figures, "text_heatmap_2", (".png", ".pdf", ".csv", ".json", ".html"))
    numbers = json.loads((figures / "text_heatmap_2.json").read_text())
    assert list(numbers) == ["initial", feedback]
    record = json.loads((run / entries[2]["dir"] / "attention.json").read_text())
    for stage, shown in numbers.items():
        assert shown["tokens"] == record["stages"][stage]["output_tokens"]
        assert len(shown["weights"]) == len(shown["tokens"]) and min(shown["weights"]) >= 0

    feedback_tokens = record["stages"][feedback]["output_tokens"]
    spans = [_span(feedback_tokens, 2), _span(feedback_tokens, 1)]
    args = ["plot", "image-heatmap", str(run), "--instance-idx", "2"]
    out = _invoke(*args, "--spans", spans[0], "--spans", spans[1]).stdout
    (written,) = figures.glob("image_heatmap_2_*.json")
    stem = written.stem
    _written(out, figures, stem, (".png", ".pdf", ".csv", ".json"))
    heatmap = json.loads(written.read_text())
    assert heatmap["feedback_stage"] == feedback and list(heatmap["spans"]) == spans
    for span, (start, end) in heatmap["spans"].items():
        assert [strip_mark(t) for t in feedback_tokens[start:end]] == span.split(",")
    features = len(record["stages"]["initial"]["geometry"]["kinds"])
    assert len(heatmap["panels"]) == 4 and all(len(v) == features for v in heatmap["panels"].values())
    csv_lines = (figures / f"{stem}.csv").read_text().splitlines()
    assert len(csv_lines) == 1 + features and csv_lines[0].startswith("feature,kind,Initial (all tokens)")

    result = _invoke(*args, "--spans", "no-such-token-here", code=1)
    assert _error(result).startswith("Error: span 'no-such-token-here' is not a run of the output tokens")

    if not any(entry.get("adopted_round") for entry in entries.values()):
        result = _invoke("plot", "avg-attention", str(run), code=1)
        assert _error(result) == (
            f"Error: {run}: none of the 2 finished instances had its revision adopted; "
            "the average map is taken over those (use instances='all' / --instances all for every one)"
        )
        _invoke("plot", "avg-attention", str(run), "--instances", "all", "--out", str(run / "all"))
        numbers = json.loads((run / "all" / "avg_attention_top_k_mean.json").read_text())
        assert numbers["instances_selected"] == "all"
        assert sorted(numbers["instances"] + numbers.get("skipped_no_tokens", [])) == [0, 2]


@pytest.mark.parametrize("family", FAMILIES)
def test_attend_without_the_loop(
    family: str,
    tiny_dirs: dict[str, Path],
    tiny_models: dict[str, LoadedModel],
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
) -> None:
    source, run = _input_file(tmp_path / "data"), tmp_path / "run"
    with caplog.at_level(logging.WARNING):
        _attend(tiny_dirs[family], source, run, "--no-volcano")
    _check_missing_image_line(_skip_lines(caplog), source)
    entries = _check_run(run, tiny_models[family], volcano=False)
    assert all(entries[i]["stages"] == ["initial"] for i in (0, 2))

    out = _invoke("plot", "text-heatmap", str(run), "--instance-idx", "0").stdout
    _written(out, run / "figures", "text_heatmap_0", (".png", ".pdf", ".csv", ".json", ".html"))
    result = _invoke("plot", "image-heatmap", str(run), "--instance-idx", "0", code=1)
    line = _error(result)
    assert line.startswith("Error: ") and line.endswith(
        "no feedback stage (the run was made without the Volcano loop)"
    )


@pytest.mark.parametrize("family", FAMILIES)
def test_avg_attention_over_adopted_revisions(
    family: str,
    tiny_dirs: dict[str, Path],
    tiny_models: dict[str, LoadedModel],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The decision is forced to B then A, so every instance adopts its first revision; the captures
    and the figure are the CLI's own."""
    decisions = itertools.cycle(["B", "A"])
    monkeypatch.setattr(volcano_loop, "generate_text", lambda *args, **kwargs: next(decisions))
    source, run = _input_file(tmp_path / "data"), tmp_path / "run"
    _attend(tiny_dirs[family], source, run)
    entries = _check_run(run, tiny_models[family], volcano=True)
    for index in (0, 2):
        assert entries[index]["adopted_round"] == 1 and entries[index]["stop_iter"] == 2
        assert entries[index]["choices"] == ["B", "A"] and entries[index]["stop_reason"] == "kept"

    figures = tmp_path / "figures"
    out = _invoke("plot", "avg-attention", str(run), "--out", str(figures)).stdout
    numbers = json.loads((figures / "avg_attention_top_k_mean.json").read_text())
    # An instance whose stage generated no tokens (a random tiny model may stop at once) is named apart.
    assert sorted(numbers["instances"] + numbers.get("skipped_no_tokens", [])) == [0, 2]
    assert numbers["n_instances"] == len(numbers["instances"]) >= 1
    assert set(numbers["maps"]) == {"Initial", "Feedback"}
    shown = [v for grid in numbers["maps"].values() for row in grid for v in row if v is not None]
    assert shown and all(v >= 0 for v in shown)
    suffixes = (".png", ".pdf", ".json") + ((".csv",) if numbers["same_layout"] else ())
    _written(out, figures, "avg_attention_top_k_mean", suffixes)
    if family == "llava":  # one fixed patch grid: the maps average feature by feature
        assert numbers["same_layout"]
        rows = (figures / "avg_attention_top_k_mean.csv").read_text().splitlines()
        assert rows[0] == "feature,kind,initial,feedback" and len(rows) == 1 + 16
