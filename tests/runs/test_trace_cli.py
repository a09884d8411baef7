"""`vistrace trace` end to end: resumable, crash-safe, bad samples skipped, export and flow plots."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from vistrace.runs.store import read_records
from vistrace.runs.trace import export_results, trace

from ..conftest import scene_image

pytestmark = [pytest.mark.integration]

QUESTIONS = ["What color is the circle?", "What shape is it?", "Where is the square?", "Is there a cat?"]


def _write_data(folder: Path, n: int, bad: bool = False) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    scene_image().save(folder / "scene.png")
    rows = [
        {
            "id": f"s{i}",
            "image": "scene.png",
            "prompt": QUESTIONS[i % 4],
            "answer": "red circle",
            "category": ["color", "shape"][i % 2],
            "dataset": "synthetic",
        }
        for i in range(n)
    ]
    lines = [json.dumps(r) for r in rows]
    if bad:
        lines += [
            json.dumps({"id": "missing", "image": "nope.png", "prompt": "What?", "answer": "red"}),
            json.dumps({"id": "noanswer", "image": "scene.png", "prompt": "What?"}),
            json.dumps({"id": "empty", "image": "scene.png", "prompt": "What?", "answer_tokens": []}),
            "{not json",
        ]
    data = folder / "data.jsonl"
    data.write_text("\n".join(lines) + "\n")
    return data


def _cli(*args: str) -> list[str]:
    return [sys.executable, "-m", "vistrace.cli", *args]


# One thread per subprocess: oversubscribed OpenMP threads slow a loaded 2-core machine tenfold.
_ENV = {**os.environ, "OMP_NUM_THREADS": "1"}


def test_bad_samples_are_skipped_and_the_run_goes_on(tiny_models, tmp_path: Path) -> None:
    data = _write_data(tmp_path / "data", 2, bad=True)
    summary = trace(tiny_models["llava"], data, tmp_path / "run", pathways=["image_to_last"], ks=[3])
    assert (summary.traced, summary.skipped) == (2, 4)
    reasons = {r["id"]: r["reason"] for r in read_records(tmp_path / "run" / "skipped.jsonl")}
    assert "image not found" in reasons["missing"]
    assert "answer" in reasons["noanswer"]
    assert "no tokens" in reasons["empty"]
    assert "not valid JSON" in reasons["line6"]
    again = trace(tiny_models["llava"], data, tmp_path / "run", pathways=["image_to_last"], ks=[3])
    assert again.traced == 0 and again.resumed == 2
    assert len(list(read_records(tmp_path / "run" / "results.jsonl"))) == 2


def test_kill_and_resume_gives_the_uninterrupted_results(tiny_dirs: dict[str, Path], tmp_path: Path) -> None:
    data = _write_data(tmp_path / "data", 8)
    model = str(tiny_dirs["mllama"])
    common = ["trace", "--model", model, "--data", str(data), "--k", "1,3", "--strategy", "naive"]
    subprocess.run(_cli(*common, "--out", str(tmp_path / "clean")), check=True, capture_output=True, env=_ENV)
    results = tmp_path / "killed" / "results.jsonl"
    process = subprocess.Popen(
        _cli(*common, "--out", str(tmp_path / "killed")),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        env=_ENV,
    )
    deadline = time.time() + 600
    while process.poll() is None and time.time() < deadline:
        if results.exists() and results.read_text().count("\n") >= 8:
            break
        time.sleep(0.05)
    os.kill(process.pid, signal.SIGKILL)
    process.wait()
    assert results.exists(), "the interrupted run wrote no result before it was killed"
    partial = results.read_text().count("\n")
    assert 0 < partial < 64, "the kill did not land in the middle of the run"
    with results.open("a") as handle:  # what a kill in the middle of a write leaves behind
        handle.write('{"id": "s7", "pathway": "la')
    subprocess.run(
        _cli(*common, "--out", str(tmp_path / "killed")), check=True, capture_output=True, env=_ENV
    )

    def keyed(path: Path) -> dict[tuple[str, str, int], dict]:
        records = list(read_records(path))
        keys = [(r["id"], r["pathway"], r["k"]) for r in records]
        assert len(keys) == len(set(keys)), "duplicated records"
        return {(r["id"], r["pathway"], r["k"]): r for r in records}

    clean, resumed = keyed(tmp_path / "clean" / "results.jsonl"), keyed(results)
    assert clean.keys() == resumed.keys() and len(clean) == 8 * 4 * 2
    for key, record in clean.items():
        assert resumed[key]["probs"] == pytest.approx(record["probs"], rel=1e-6, abs=1e-9)
        assert resumed[key]["p_full"] == pytest.approx(record["p_full"], rel=1e-6)


def test_export_and_plot_flow(tiny_models, tmp_path: Path) -> None:
    data = _write_data(tmp_path / "data", 2)
    run = tmp_path / "run"
    trace(
        tiny_models["mllama"], data, run, pathways=["image_to_last", "question_to_last"], ks=[3], mode="paper"
    )
    for fmt in ("jsonl", "csv", "parquet"):
        assert export_results(run, run / f"out.{fmt}", fmt).stat().st_size > 0
    rows = [json.loads(line) for line in (run / "out.jsonl").read_text().splitlines()]
    import pyarrow.parquet as pq

    assert pq.read_table(run / "out.parquet").to_pylist() == rows
    assert {r["pathway"] for r in rows} == {"image_to_last", "question_to_last"}
    assert all(len(r["probs"]) == 10 for r in rows)
    completed = subprocess.run(
        _cli("plot", "flow", str(run), "--min-p-full", "0"), capture_output=True, text=True, env=_ENV
    )
    assert completed.returncode == 0, completed.stderr
    figures = sorted(p.name for p in (run / "figures").iterdir())
    assert any(name.endswith(".png") for name in figures) and any(name.endswith(".pdf") for name in figures)
    assert any(name.endswith(".csv") for name in figures)


@pytest.mark.parametrize("family", ["llava", "mllama", "qwen3_vl"])
def test_packed_trace_gives_the_records_of_one_sample_at_a_time(
    tiny_models, family: str, tmp_path: Path
) -> None:
    """`--pack-memory` (here on the CPU, where it is off by default) packs samples' re-runs into shared
    calls and writes the same records, up to float rounding of the larger products."""
    data = _write_data(tmp_path / "data", 6)
    pathways = ["image_to_last", "question_to_last", "image_to_question"]
    alone = trace(tiny_models[family], data, tmp_path / "alone", pathways=pathways, ks=[1, 3])
    packed = trace(
        tiny_models[family], data, tmp_path / "packed", pathways=pathways, ks=[1, 3], pack_memory=1.0
    )
    assert alone.traced == packed.traced == 6
    rows = [list(read_records(tmp_path / run / "results.jsonl")) for run in ("alone", "packed")]
    assert len(rows[0]) == len(rows[1]) == 6 * 3 * 2
    for want, got in zip(*rows, strict=True):
        assert {k: v for k, v in got.items() if k not in ("probs", "token_probs")} == {
            k: v for k, v in want.items() if k not in ("probs", "token_probs")
        }
        assert got["probs"] == pytest.approx(want["probs"], rel=1e-5)
