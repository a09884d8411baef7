"""A read-only output folder: every writing command says so in one line, and nothing already
written is lost. The folder is made truly read-only (a read-only bind mount in a private user and
mount namespace, `unshare -rm`), because permission bits do not stop root."""

from __future__ import annotations

import json
import os
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from ..conftest import scene_image

pytestmark = [pytest.mark.integration]

_ENV = {**os.environ, "OMP_NUM_THREADS": "1"}


def _namespaces_work() -> bool:
    if shutil.which("unshare") is None:
        return False
    probe = subprocess.run(["unshare", "-rm", "true"], capture_output=True)
    return probe.returncode == 0


needs_namespaces = pytest.mark.skipif(
    not _namespaces_work(),
    reason="needs `unshare -rm` (user and mount namespaces) to make a read-only folder",
)


def _read_only(folder: Path, *command: str) -> subprocess.CompletedProcess[str]:
    """Run `command` with `folder` bind-mounted read-only onto itself."""
    quoted = shlex.quote(str(folder))
    script = f"mount --bind {quoted} {quoted} && mount -o remount,bind,ro {quoted} && exec " + " ".join(
        shlex.quote(part) for part in command
    )
    return subprocess.run(["unshare", "-rm", "sh", "-c", script], capture_output=True, text=True, env=_ENV)


def _data(folder: Path, n: int) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    scene_image().save(folder / "scene.png")
    rows = [
        {"id": f"s{i}", "image": "scene.png", "prompt": "What colour?", "answer": "red"} for i in range(n)
    ]
    data = folder / "data.jsonl"
    data.write_text("".join(json.dumps(row) + "\n" for row in rows))
    return data


def _snapshot(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


@needs_namespaces
def test_trace_into_a_read_only_folder_is_one_line_and_loses_nothing(
    tiny_dirs: dict[str, Path], tmp_path: Path
) -> None:
    model = str(tiny_dirs["llava"])
    run = tmp_path / "run"
    common = [sys.executable, "-m", "vistrace.cli", "trace", "--model", model, "--k", "3", "--out", str(run)]
    first = subprocess.run(
        [*common, "--data", str(_data(tmp_path / "two", 2))], capture_output=True, text=True, env=_ENV
    )
    assert first.returncode == 0, first.stderr
    before = _snapshot(run)

    # Resuming with more samples must write: refused in one line, the two results untouched.
    resumed = _read_only(run, *common, "--data", str(_data(tmp_path / "two", 3)))
    assert resumed.returncode == 1
    errors = [line for line in resumed.stderr.splitlines() if line.startswith("Error:")]
    assert len(errors) == 1 and "Traceback" not in resumed.stderr, resumed.stderr
    assert (
        "read-only" in errors[0].lower() or "permission" in errors[0].lower() or "writ" in errors[0].lower()
    )
    assert _snapshot(run) == before


@needs_namespaces
def test_a_new_run_under_a_read_only_folder_is_one_line(tiny_dirs: dict[str, Path], tmp_path: Path) -> None:
    parent = tmp_path / "parent"
    parent.mkdir()
    data = _data(tmp_path / "data", 1)
    result = _read_only(
        parent,
        sys.executable, "-m", "vistrace.cli", "trace", "--model", str(tiny_dirs["llava"]),
        "--data", str(data), "--k", "3", "--out", str(parent / "run"),
    )  # fmt: skip
    assert result.returncode == 1
    errors = [line for line in result.stderr.splitlines() if line.startswith("Error:")]
    assert len(errors) == 1 and "Traceback" not in result.stderr, result.stderr
    assert str(parent / "run") in errors[0]
    assert not any(parent.iterdir())
