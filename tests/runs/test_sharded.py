"""Sharded runs: `trace`, `eval` and `attend` launched as 2 processes (torchrun, gloo on the CPU)
equal the one-process run, and so does a run killed part-way and resumed with another number of
processes.

Every process runs one thread (torchrun's default), as the one-process reference run in this test
process does (tests/conftest.py), so the numbers are compared exactly."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from filelock import FileLock
from safetensors.torch import load_file
from typer.testing import CliRunner

from vistrace.cli import app
from vistrace.demo.world import make_split
from vistrace.demo.writers import write_vqav2
from vistrace.runs.attend_io import ATTENTION_FILE, read_log
from vistrace.runs.folder import LOCK_FILE
from vistrace.runs.predictions import load_predictions
from vistrace.runs.shard import read_union

from ..conftest import scene_image

pytestmark = [pytest.mark.integration]

FAMILY = "llava"


def _env() -> dict[str, str]:
    return {**os.environ, "OMP_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false"}


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def _launch_command(processes: int, args: tuple[str, ...], launcher: str = "torchrun") -> list[str]:
    if launcher == "accelerate":
        return [
            sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes",
            str(processes), "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no",
            "--main_process_port", str(_free_port()), "-m", "vistrace", *args,
        ]  # fmt: skip
    return [
        sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node",
        str(processes), "-m", "vistrace", *args,
    ]  # fmt: skip


def _launch(processes: int, *args: str, launcher: str = "torchrun") -> str:
    """Run `vistrace ARGS` as `processes` processes; its standard output."""
    done = subprocess.run(
        _launch_command(processes, args, launcher), env=_env(), capture_output=True, text=True, timeout=600
    )
    assert done.returncode == 0, f"{' '.join(args)} on {processes} processes:\n{done.stderr[-4000:]}"
    return done.stdout


def _launch_and_kill(processes: int, started: Callable[[], bool], *args: str) -> None:
    """Start `vistrace ARGS` on `processes` processes and kill every one (SIGKILL) as soon as
    `started()` says a first result is on disk."""
    launched = subprocess.Popen(
        _launch_command(processes, args),
        env=_env(),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        deadline = time.monotonic() + 300
        while not started() and launched.poll() is None and time.monotonic() < deadline:
            time.sleep(0.02)
    finally:
        for pid in [
            launched.pid,
            *_descendants(launched.pid),
        ]:  # the launcher starts its workers in sessions of their own
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        launched.wait()


def _descendants(pid: int) -> list[int]:
    """Every process below `pid` (from /proc)."""
    found: list[int] = []
    for task in Path(f"/proc/{pid}/task").glob("*"):
        children = (task / "children").read_text().split() if (task / "children").is_file() else []
        for child in map(int, children):
            found += [child, *_descendants(child)]
    return found


def _one_process(*args: str) -> str:
    result = CliRunner().invoke(app, list(args))
    assert result.exit_code == 0, f"vistrace {' '.join(args)}:\n{result.output}\n{result.exception!r}"
    return result.stdout


def _lines(path: Path) -> int:
    return sum(1 for _ in read_union(path.parent, path.name))


def _trace_data(folder: Path, samples: int) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    lines = []
    for i in range(samples):
        scene_image(40 + 4 * i, 32).save(folder / f"scene{i}.png")
        lines.append(
            json.dumps({"id": f"s{i}", "image": f"scene{i}.png", "prompt": "What is red?", "answer": "block"})
        )
    lines.insert(3, "not a JSON object")  # a bad line, skipped by whichever rank owns it
    path = folder / "data.jsonl"
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


def test_sharded_trace_equals_one_process(tiny_dirs: dict[str, Path], tmp_path: Path) -> None:
    data = _trace_data(tmp_path / "data", samples=9)
    model = str(tiny_dirs[FAMILY])
    options = ("--data", str(data), "--k", "1,3", "--pathways", "image_to_last,last_to_last", "--layer-probs")
    one, two, resumed = tmp_path / "one", tmp_path / "two", tmp_path / "resumed"

    _one_process("trace", "--model", model, "--out", str(one), *options)
    out = _launch(2, "trace", "--model", model, "--out", str(two), *options)
    assert "9 traced, 0 already done, 1 skipped; 36 records" in out
    assert (two / "results.rank-1.jsonl").is_file(), "rank 1 wrote no shard"

    _launch_and_kill(
        2,
        lambda: _lines(resumed / "results.jsonl") >= 4,
        "trace",
        "--model",
        model,
        "--out",
        str(resumed),
        *options,
    )
    partial = _lines(resumed / "results.jsonl")
    assert 0 < partial < 36, f"the kill left {partial} of 36 records: not part-way"
    with (resumed / "results.rank-1.jsonl").open("a", encoding="utf-8") as handle:
        handle.write('{"id": "s9", "pathway": "image_to')  # what a kill in the middle of a write leaves
    out = _launch(3, "trace", "--model", model, "--out", str(resumed), *options)
    assert "already done" in out and "36 records" in out

    exports = {}
    for run in (one, two, resumed):
        exported = Path(_one_process("export", str(run), "--format", "jsonl").strip())
        exports[run.name] = exported.read_text(encoding="utf-8")
    assert exports["two"] == exports["one"]
    assert exports["resumed"] == exports["one"]
    rows = [json.loads(line) for line in exports["one"].splitlines()]
    assert [r["id"] for r in rows[::4]] == [f"s{i}" for i in range(9)], "export is not in input order"
    assert all(r["layer_probs"] for r in rows)


def _vqa(folder: Path) -> tuple[Path, Path, Path]:
    files = write_vqav2(make_split(4, seed=0, image_size=40), folder)
    return files.questions, files.annotations, folder / "images"


def test_sharded_eval_equals_one_process(tiny_dirs: dict[str, Path], tmp_path: Path) -> None:
    questions, annotations, images = _vqa(tmp_path / "vqa")
    model = str(tiny_dirs[FAMILY])
    options = (
        "--dataset", "vqav2", "--questions", str(questions), "--annotations", str(annotations),
        "--images", str(images), "--max-new-tokens", "3", "--batch-size", "2",
    )  # fmt: skip
    one, two, resumed = tmp_path / "one", tmp_path / "two", tmp_path / "resumed"

    _one_process("eval", "--model", model, "--out", str(one), *options)
    expected, _ = load_predictions(one)
    assert len(expected) >= 8
    out = _launch(2, "eval", "--model", model, "--out", str(two), *options, launcher="accelerate")
    assert f"{len(expected)} generated, 0 resumed, 0 skipped" in out
    assert load_predictions(two)[0] == expected

    _launch_and_kill(
        2,
        lambda: _lines(resumed / "predictions.jsonl") >= 2,
        "eval",
        "--model",
        model,
        "--out",
        str(resumed),
        *options,
    )
    partial = _lines(resumed / "predictions.jsonl")
    assert 0 < partial < len(expected), f"the kill left {partial} of {len(expected)} predictions"
    out = _one_process("eval", "--model", model, "--out", str(resumed), *options)
    assert f"{partial} resumed" in out
    assert load_predictions(resumed)[0] == expected

    for run in (one, two, resumed):
        _one_process("score", str(run))
    scores = {run.name: json.loads((run / "scores.json").read_text()) for run in (one, two, resumed)}
    for table in scores.values():
        table.pop("run_dir")
    assert scores["two"] == scores["one"] == scores["resumed"]


def _instances(folder: Path, count: int) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    records = []
    for i in range(count):
        scene_image(48 - 4 * (i % 3), 32 + 4 * (i % 2)).save(folder / f"scene{i}.png")
        records.append(
            {
                "image_id": f"scene{i}",
                "image_src": f"scene{i}.png",
                "question": "What is red?",
                "gold_answer": "block",
            }
        )
    records[2]["image_src"] = "missing.png"  # skipped, and retried on every resume
    path = folder / "input.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in records), encoding="utf-8")
    return path


def _attention(run: Path) -> dict[str, Any]:
    log = read_log(run)
    tensors = {
        entry["dir"]: load_file(str(run / entry["dir"] / ATTENTION_FILE))
        for entry in log["entries"]
        if not entry.get("skipped")
    }
    return {"log": log, "tensors": tensors}


def test_sharded_attend_equals_one_process(tiny_dirs: dict[str, Path], tmp_path: Path) -> None:
    source = _instances(tmp_path / "input", count=5)
    model = str(tiny_dirs[FAMILY])
    options = ("--input", str(source), "--max-new-tokens", "4")
    one, two, resumed = tmp_path / "one", tmp_path / "two", tmp_path / "resumed"

    _one_process("attend", "--model", model, "--out", str(one), *options)
    expected = _attention(one)
    assert len(expected["log"]["entries"]) == 5 and len(expected["tensors"]) == 4
    _launch(2, "attend", "--model", model, "--out", str(two), *options)
    assert not list(two.glob("log.rank-*.json")), "the rank logs were not merged into log.json"

    def finished() -> bool:
        return any(resumed.glob("*/attention.json"))

    _launch_and_kill(2, finished, "attend", "--model", model, "--out", str(resumed), *options)
    assert 0 < len(list(resumed.glob("*/attention.json"))) < 4, "the kill did not land part-way"
    _launch(3, "attend", "--model", model, "--out", str(resumed), *options)

    for run in (two, resumed):
        got = _attention(run)
        assert got["log"] == expected["log"]
        assert got["tensors"].keys() == expected["tensors"].keys()
        for name, tensors in expected["tensors"].items():
            assert got["tensors"][name].keys() == tensors.keys()
            for key, tensor in tensors.items():
                assert got["tensors"][name][key].equal(tensor), f"{run.name}: {name} {key}"


def test_a_second_launch_on_a_busy_folder_writes_nothing(tiny_dirs: dict[str, Path], tmp_path: Path) -> None:
    """Rank 0 of every launch takes the lock of a one-process run; the other ranks wait for it
    before reading or writing, so a launch on a folder in use stops before any rank writes."""
    data = _trace_data(tmp_path / "data", samples=4)
    run = tmp_path / "run"
    args = ("trace", "--model", str(tiny_dirs[FAMILY]), "--data", str(data), "--out", str(run), "--k", "3")
    _one_process(*args, "--limit", "1")
    before = {path.name: path.read_bytes() for path in run.iterdir() if path.is_file()}
    with FileLock(run / LOCK_FILE, timeout=0):
        done = subprocess.run(
            _launch_command(2, args),
            env=_env(),
            capture_output=True,
            text=True,
            timeout=600,
        )
    assert done.returncode != 0
    assert "another vistrace process is writing this run folder" in done.stderr, done.stderr[-6000:]
    after = {path.name: path.read_bytes() for path in run.iterdir() if path.is_file()}
    assert {name: data for name, data in after.items() if not name.endswith(".lock")} == {
        name: data for name, data in before.items() if not name.endswith(".lock")
    }
