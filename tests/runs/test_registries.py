"""Dataset readers and metrics are registries of plain functions: a registered reader is a choice of
`vistrace eval --dataset`, and the metric registered for its dataset scores its predictions."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from pathlib import Path

import pytest
from typer.testing import CliRunner

import vistrace
from vistrace.cli import app
from vistrace.data import Example, ReadResult, by_name
from vistrace.data import metrics as metrics_module
from vistrace.data.metrics import ScoreRules, metric_for
from vistrace.runs.evaluate import read_jsonl
from vistrace.runs.scoring import metric_name, score_run

from ..conftest import scene_image


@pytest.fixture
def registries() -> Iterator[None]:
    """The reader and metric registries as they were before the test."""
    readers = dict(by_name._READERS)
    registered, by_dataset = dict(metrics_module._REGISTERED), dict(metrics_module._BY_DATASET)
    yield
    for saved, live in (
        (readers, by_name._READERS),
        (registered, metrics_module._REGISTERED),
        (by_dataset, metrics_module._BY_DATASET),
    ):
        live.clear()
        live.update(saved)  # type: ignore[arg-type]


def _read_lines(file: Path, *, questions: Path | None, images: Path | None, split: str | None) -> ReadResult:
    """`question|answer` lines about the image `scene.png` next to the file."""
    if split is not None:
        raise ValueError("--split: a lines file holds one split")
    rows = [line.split("|") for line in file.read_text(encoding="utf-8").splitlines() if line.strip()]
    folder = images or file.parent
    examples = [
        Example(id=str(i), image=folder / "scene.png", question=q, answers=(a,), dataset="lines")
        for i, (q, a) in enumerate(rows)
    ]
    return ReadResult(examples, [])


def _initial(prediction: str, answers: Sequence[str], rules: ScoreRules) -> float:
    """1 when the prediction starts with the answer's first letter."""
    return float(prediction[:1].casefold() == answers[0][:1].casefold())


@pytest.mark.integration
def test_a_registered_reader_and_metric_run_through_eval_and_score(
    registries: None, tiny_dirs: dict[str, Path], tmp_path: Path
) -> None:
    vistrace.register_reader("lines", _read_lines)
    vistrace.register_metric("initial", _initial, datasets=("lines",))
    assert list(by_name.READERS)[-1] == "lines"
    assert metric_name("lines") == "initial" and metric_name("vqav2") == "vqa_accuracy"
    scene_image().save(tmp_path / "scene.png")
    data = tmp_path / "questions.txt"
    data.write_text("What color is the block?|red\nWhat shape?|square\n", encoding="utf-8")
    run = tmp_path / "run"
    args = ["eval", "--model", str(tiny_dirs["llava"]), "--dataset", "lines", "--annotations", str(data)]
    result = CliRunner().invoke(app, [*args, "--out", str(run), "--max-new-tokens", "2"])
    assert result.exit_code == 0, result.output
    predictions = read_jsonl(run / "predictions.jsonl")
    assert [(p["dataset"], p["prompt"]) for p in predictions] == [
        ("lines", "What color is the block?"),
        ("lines", "What shape?"),
    ]
    table = score_run(run)
    expected = [_initial(p["prediction"], p["answers"], ScoreRules()) for p in predictions]
    assert table.metric == "initial" and table.overall.score == sum(expected) / 2
    refused = CliRunner().invoke(app, [*args, "--out", str(tmp_path / "r2"), "--split", "val"])
    assert refused.exit_code == 1 and "--split: a lines file holds one split" in refused.output


@pytest.mark.unit
def test_the_registries_refuse_a_taken_name_and_unknown_settings(registries: None) -> None:
    with pytest.raises(ValueError, match="a reader named 'jsonl' exists; pass replace=True"):
        vistrace.register_reader("jsonl", _read_lines)
    with pytest.raises(ValueError, match="a metric named 'anls' exists; pass replace=True"):
        vistrace.register_metric("anls", _initial)
    with pytest.raises(ValueError, match=r"settings \['threshold'\]: not fields of ScoreRules"):
        vistrace.register_metric("mine", _initial, settings=("threshold",))
    vistrace.register_metric("anls", _initial, datasets=("docvqa",), replace=True)
    assert metric_for("docvqa").score is _initial
    assert metric_for("never-registered").name == "exact_match"


@pytest.mark.unit
def test_eval_lists_the_registered_readers() -> None:
    result = CliRunner().invoke(app, ["eval", "-h"], env={"COLUMNS": "200"})
    assert result.exit_code == 0, result.output
    assert f"A registered reader: {', '.join(by_name.READERS)}." in result.output
