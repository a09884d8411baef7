"""`vistrace trace --score/--layer-probs`, the per-score export columns and `plot flow --score/--by-word`,
and run folders written before per-token probabilities were stored."""

from __future__ import annotations

import csv
import json
from pathlib import Path
from typing import Any

import pytest
import torch
from typer.testing import CliRunner

from vistrace.cli import app
from vistrace.knockout.scores import SCORES, change, score
from vistrace.runs.export import change_column, read_layer_probs, score_column
from vistrace.runs.folder import read_jsonl

from ..conftest import scene_image

pytestmark = [pytest.mark.integration]

PATHWAYS = "image_to_last,question_to_last"


def _invoke(*args: str) -> Any:
    result = CliRunner().invoke(app, list(args))
    assert result.exit_code == 0, result.output
    return result


def _data(folder: Path) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    scene_image().save(folder / "scene.png")
    rows = [
        {
            "id": "s0",
            "image": "scene.png",
            "prompt": "What is it?",
            "answer": "a red circle.",
            "dataset": "d",
        },
        {"id": "s1", "image": "scene.png", "prompt": "Where?", "answer": "the top left", "dataset": "d"},
    ]
    (folder / "data.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    return folder / "data.jsonl"


@pytest.fixture(scope="module")
def geometric_run(tiny_dirs: dict[str, Path], tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("scores")
    data, run = _data(root / "data"), root / "run"
    model = str(tiny_dirs["llava"])
    args = ["--model", model, "--data", str(data), "--out", str(run), "--pathways", PATHWAYS, "--k", "3"]
    _invoke("trace", *args, "--score", "geometric", "--layer-probs")
    return run


def test_records_hold_the_score_and_per_token_probabilities(geometric_run: Path) -> None:
    config = json.loads((geometric_run / "config.json").read_text())
    assert config["score"] == "geometric" and config["layer_probs"] is True
    records = read_jsonl(geometric_run / "results.jsonl")
    assert len(records) == 2 * 2
    for record in records:
        n_layers, n_tokens = len(record["probs"]), len(record["answer_tokens"])
        assert record["score"] == "geometric"
        assert len(record["p_full_tokens"]) == n_tokens
        assert [len(row) for row in record["token_probs"]] == [n_tokens] * n_layers
        assert record["p_full"] == float(score("geometric", torch.tensor(record["p_full_tokens"])))
        assert {w["kind"] for w in record["words"]} <= {"content", "function", "punctuation"}
    layer_probs = read_layer_probs(geometric_run)
    assert sorted(layer_probs) == ["s0", "s1"]
    assert len(read_jsonl(geometric_run / "layer_probs.jsonl")) == 2  # once per sample
    for record in records:
        rows = layer_probs[record["id"]]
        assert len(rows) == len(record["probs"]) and {len(r) for r in rows} == {len(record["answer_tokens"])}
        # The last layer's lens reading is the model's own answer probability.
        assert rows[-1] == pytest.approx(record["p_full_tokens"], rel=1e-4)


def test_export_recomputes_every_score_equal_to_the_run(geometric_run: Path) -> None:
    out = geometric_run / "out.jsonl"
    _invoke("export", str(geometric_run), "--format", "jsonl", "--out", str(out))
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    records = {(r["id"], r["pathway"]): r for r in read_jsonl(geometric_run / "results.jsonl")}
    for row in rows:
        record = records[(row["id"], row["pathway"])]
        assert row["score_geometric"] == record["p_full"]  # recomputed, the same number
        blocked, unblocked = (torch.tensor(record[f], dtype=torch.float64) for f in ("probs", "p_full"))
        expected = change("geometric", blocked, unblocked)
        assert row["change_geometric"] == pytest.approx(expected.tolist(), rel=1e-9)
        full = torch.tensor(record["p_full_tokens"], dtype=torch.float64)
        for name in SCORES:
            assert row[score_column(name)] == pytest.approx(float(score(name, full)), rel=1e-12)
            assert len(row[change_column(name)]) == len(record["probs"])
        assert row["layer_probs"] is not None and row["token_probs"] == record["token_probs"]
    _invoke("export", str(geometric_run), "--format", "csv", "--out", str(geometric_run / "out.csv"))
    with (geometric_run / "out.csv").open() as handle:
        table = list(csv.DictReader(handle))
    assert len(table) == 4 and float(table[0]["score_geometric"]) == float(table[0]["p_full"])
    assert {"score_mean_log", "change_first_l0", "change_mean_log_l0"} <= set(table[0])


def test_plot_flow_by_word_layer_panel_and_other_score(geometric_run: Path) -> None:
    _invoke("plot", "flow", str(geometric_run), "--min-p-full", "0", "--by-word")
    names = {p.name for p in (geometric_run / "figures").iterdir()}
    for pathway in PATHWAYS.split(","):
        assert {f"words_d_strict_k3_{pathway}.{s}" for s in ("png", "pdf", "csv")} <= names
    assert any(n.endswith("_layers.csv") for n in names)
    with (geometric_run / "figures" / "words_d_strict_k3_image_to_last.csv").open() as handle:
        kinds = {row["kind"] for row in csv.DictReader(handle)}
    assert {"content", "function"} <= kinds
    other = geometric_run / "mean-log"
    _invoke(
        "plot", "flow", str(geometric_run), "--min-p-full", "0", "--score", "mean-log", "--out", str(other)
    )
    assert any(other.glob("flow_*.png"))


def test_a_run_without_per_token_probabilities_still_exports_and_plots(
    geometric_run: Path, tmp_path: Path
) -> None:
    old = tmp_path / "old"
    old.mkdir()
    dropped = ("score", "p_full_tokens", "token_probs", "words")
    lines = []
    for record in read_jsonl(geometric_run / "results.jsonl"):
        record = {k: v for k, v in record.items() if k not in dropped}
        record["p_full"], record["probs"] = 0.9, [0.5] * len(record["probs"])  # product numbers
        lines.append(json.dumps(record))
    (old / "results.jsonl").write_text("\n".join(lines) + "\n")
    _invoke("export", str(old), "--format", "jsonl", "--out", str(old / "out.jsonl"))
    rows = [json.loads(line) for line in (old / "out.jsonl").read_text().splitlines()]
    assert all(r["score"] == "product" and r["score_product"] == 0.9 for r in rows)
    assert all(r["score_geometric"] is None and r["token_probs"] is None for r in rows)
    _invoke("export", str(old), "--format", "csv", "--out", str(old / "out.csv"))
    _invoke("plot", "flow", str(old), "--min-p-full", "0")
    assert any((old / "figures").glob("flow_*.png"))
    refused = CliRunner().invoke(app, ["plot", "flow", str(old), "--min-p-full", "0", "--by-word"])
    assert refused.exit_code != 0
