"""`vistrace eval` → `score` → `build` → `trace` → `export` → `plot flow` on a small VQAv2-format dataset."""

from __future__ import annotations

import csv
import json
import logging
from pathlib import Path

import pytest
from typer.testing import CliRunner

from vistrace.cli import app
from vistrace.demo.world import make_split
from vistrace.demo.writers import write_vqav2
from vistrace.models.loading import LoadedModel
from vistrace.models.tiny import FAMILIES
from vistrace.runs.evaluate import read_jsonl

pytestmark = [pytest.mark.integration]

TRACE_FIELDS = ("id", "image", "prompt", "answer_tokens", "answer", "category")
PATHWAYS = ("image_to_last", "question_to_last")
MISSING_IMAGE, EMPTY_QUESTION, NO_QUESTION_KEY = "999000", "1999", "1998"


def _dataset(root: Path) -> tuple[Path, Path, Path, list[str]]:
    """A 2-scene VQAv2 split plus three bad questions; (questions, annotations, images, good ids)."""
    files = write_vqav2(make_split(2, seed=0, image_size=48), root)
    questions = json.loads(files.questions.read_text())
    annotations = json.loads(files.annotations.read_text())
    good = [str(q["question_id"]) for q in questions["questions"]]
    template = annotations["annotations"][0]
    questions["questions"] += [
        {"image_id": 999, "question": "What color is the square?", "question_id": int(MISSING_IMAGE)},
        {"image_id": 1, "question": "", "question_id": int(EMPTY_QUESTION)},
        {"image_id": 1, "question_id": int(NO_QUESTION_KEY)},
    ]
    annotations["annotations"] += [
        {**template, "question_id": int(qid), "image_id": image_id}
        for qid, image_id in ((MISSING_IMAGE, 999), (EMPTY_QUESTION, 1), (NO_QUESTION_KEY, 1))
    ]
    files.questions.write_text(json.dumps(questions))
    files.annotations.write_text(json.dumps(annotations))
    return files.questions, files.annotations, root / "images", good


def _invoke(*args: str) -> str:
    result = CliRunner().invoke(app, list(args))
    assert result.exit_code == 0, f"vistrace {' '.join(args)}:\n{result.output}\n{result.exception!r}"
    return result.stdout


@pytest.mark.parametrize("family", FAMILIES)
def test_eval_score_build_trace_export_plot(
    family: str,
    tiny_dirs: dict[str, Path],
    tiny_models: dict[str, LoadedModel],
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
) -> None:
    questions, annotations, images, good = _dataset(tmp_path / "vqa")
    model = str(tiny_dirs[family])
    run, analysis, trace_run = tmp_path / "eval", tmp_path / "analysis.jsonl", tmp_path / "trace"

    with caplog.at_level(logging.WARNING):
        eval_out = _invoke(
            "eval", "--model", model, "--dataset", "vqav2", "--questions", str(questions),
            "--annotations", str(annotations), "--images", str(images), "--out", str(run),
            "--max-new-tokens", "3", "--batch-size", "4",
        )  # fmt: skip
    assert f"{len(good)} generated, 0 resumed, 3 skipped" in eval_out
    warnings = [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING]

    def skip_line(sample: str) -> str:
        lines = [m for m in warnings if f"id {sample})" in m or f"example {sample}" in m]
        assert len(lines) == 1, f"sample {sample}: {lines}"
        assert "\n" not in lines[0] and lines[0].startswith("skipped")
        return lines[0]

    missing = skip_line(MISSING_IMAGE)
    assert "COCO_val2014_000000000999.jpg" in missing and "image not found" in missing
    assert f"{questions}: question 7 (id {EMPTY_QUESTION}): empty 'question'" in skip_line(EMPTY_QUESTION)
    assert f"{questions}: question 8 (id {NO_QUESTION_KEY}): missing key 'question'" in skip_line(
        NO_QUESTION_KEY
    )
    skipped = {r["id"]: r["reason"] for r in read_jsonl(run / "skipped.jsonl")}
    assert set(skipped) == {MISSING_IMAGE, EMPTY_QUESTION, NO_QUESTION_KEY}
    predictions = {r["id"]: r for r in read_jsonl(run / "predictions.jsonl")}
    assert sorted(predictions) == sorted(good)

    score_out = _invoke("score", str(run))
    lines = score_out.splitlines()
    assert lines[0] == "vqav2 — vqa_accuracy (vqa_rule=official)"
    assert lines[1].split() == ["category", "count", "score"]
    rows = {line.split()[0]: line.split()[1:] for line in lines[2:] if not line.startswith("unscored")}
    categories = {r["category"] for r in predictions.values()}
    assert set(rows) == categories | {"overall"}
    assert rows["overall"][0] == str(len(good)) and 0 <= float(rows["overall"][1]) <= 100
    assert lines[-1].endswith("skipped examples: 3")
    scores = json.loads((run / "scores.json").read_text())
    assert scores["overall"]["count"] == len(good) and scores["skipped"] == 3
    assert (run / "scores.csv").read_text().startswith("metric,category,count,score")

    build_out = _invoke("build", str(run), "--out", str(analysis), "--correct-rule", "score>=0")
    assert "correct set, rule 'score>=0'" in build_out
    built = read_jsonl(analysis)
    answered = [key for key, r in predictions.items() if r["generated_ids"]]
    assert answered, "the model generated no token for any question"
    assert [r["id"] for r in built] == sorted(answered, key=int)
    for record in built:
        assert list(record)[: len(TRACE_FIELDS)] == list(TRACE_FIELDS)
        source = predictions[record["id"]]
        assert Path(record["image"]).is_file() and record["image"] == source["image"]
        assert record["prompt"] == source["prompt"] and "Question: " in record["prompt"]
        assert record["answer_tokens"] == source["generated_ids"]
        assert record["answer"] == source["prediction"] and record["category"] == source["category"]
    assert json.loads((tmp_path / "analysis.summary.json").read_text())["overall"]["kept"] == len(built)

    trace_out = _invoke(
        "trace", "--model", model, "--data", str(analysis), "--out", str(trace_run),
        "--pathways", ",".join(PATHWAYS), "--k", "3",
    )  # fmt: skip
    assert f"{len(built)} traced, 0 already done, 0 skipped" in trace_out
    results = read_jsonl(trace_run / "results.jsonl")
    n_layers = tiny_models[family].adapter.num_layers(tiny_models[family].model)
    assert sorted((r["id"], r["pathway"]) for r in results) == sorted(
        (r["id"], p) for r in built for p in PATHWAYS
    )
    for result in results:
        assert result["k"] == 3 and result["mode"] == "strict" and 0 < result["p_full"] <= 1
        assert len(result["probs"]) == n_layers and all(0 <= p <= 1 for p in result["probs"])

    for fmt in ("csv", "jsonl"):
        exported = Path(_invoke("export", str(trace_run), "--format", fmt).strip())
        name = "results.export.jsonl" if fmt == "jsonl" else f"results.{fmt}"
        assert exported == trace_run / name and exported.is_file()
    with (trace_run / "results.csv").open() as handle:
        table = list(csv.DictReader(handle))
    assert len(table) == len(results)
    assert set(table[0]) >= {"id", "pathway", "k", "p_full", *(f"prob_l{i}" for i in range(n_layers))}

    plot_out = _invoke("plot", "flow", str(trace_run), "--min-p-full", "0")
    figures = trace_run / "figures"
    assert f"files written to {figures}" in plot_out
    for category in {r["category"].replace("/", "-") for r in built}:
        stem = f"flow_vqav2_{category}_strict_k3"
        for suffix in (".png", ".pdf", ".csv", "_stages.png", "_stages.pdf", "_stages.json"):
            assert (figures / f"{stem}{suffix}").stat().st_size > 0, f"{stem}{suffix}"


def test_cli_reports_a_missing_run_in_one_line(tmp_path: Path) -> None:
    """A library error about the user's input is one `Error:` line and exit code 1, not a traceback."""
    result = CliRunner().invoke(app, ["score", str(tmp_path / "no-run")])
    assert result.exit_code == 1 and isinstance(result.exception, SystemExit)
    assert (
        result.stderr.strip()
        == f"Error: {tmp_path / 'no-run'}: no predictions.jsonl; run the evaluation first"
    )
