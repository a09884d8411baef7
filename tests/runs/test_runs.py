"""The run-folder layer: config checked on resume, one writer at a time, torn tails repaired, atomic
and group-readable writes, one JSONL reader that skips bad lines, no command writing onto another's
files."""

from __future__ import annotations

import json
import os
import stat
from pathlib import Path

import pytest
from filelock import FileLock

from vistrace.runs.folder import (
    LOCK_FILE,
    ConfigMismatchError,
    RunLockedError,
    append_jsonl,
    check_writable_target,
    ensure_folder,
    open_run,
    read_jsonl,
    repair_tail,
    write_json,
)
from vistrace.runs.store import JsonlStore

pytestmark = [pytest.mark.unit]


def test_config_is_written_at_creation_and_checked_on_resume(tmp_path: Path) -> None:
    run = tmp_path / "run"
    with open_run(run, "trace", {"model": "m", "dtype": "float32", "temperature": 1.0}):
        pass
    assert json.loads((run / "config.json").read_text())["command"] == "trace"
    with open_run(run, "trace", {"model": "m", "dtype": "float32", "temperature": 1.0}):
        pass
    for changed in ({"model": "other"}, {"dtype": "bfloat16"}, {"temperature": 0.6}):
        config = {"model": "m", "dtype": "float32", "temperature": 1.0, **changed}
        with (
            pytest.raises(ConfigMismatchError, match=next(iter(changed))) as caught,
            open_run(run, "trace", config),
        ):
            pass
        assert "\n" not in str(caught.value)


def test_one_command_never_writes_into_another_commands_folder(tmp_path: Path) -> None:
    with open_run(tmp_path / "run", "eval", {"dataset": "jsonl"}):
        pass
    with (
        pytest.raises(ConfigMismatchError, match="vistrace eval"),
        open_run(tmp_path / "run", "trace", {"dataset": "jsonl"}),
    ):
        pass


def test_a_second_process_on_the_same_folder_is_refused(tmp_path: Path) -> None:
    run = ensure_folder(tmp_path / "run")
    other = FileLock(run / LOCK_FILE, timeout=0)  # another process's lock: a separate open file
    other.acquire()
    try:
        with pytest.raises(RunLockedError, match="another vistrace process"), open_run(run, "trace", {}):
            pass
    finally:
        other.release()
    with open_run(run, "trace", {}):
        pass


def test_out_that_is_a_file_is_one_line(tmp_path: Path) -> None:
    (tmp_path / "file").write_text("x")
    with pytest.raises(ValueError, match="is a file, not a folder"):
        ensure_folder(tmp_path / "file")


def test_torn_tail_is_repaired_and_nothing_is_duplicated(tmp_path: Path) -> None:
    path = tmp_path / "results.jsonl"
    store = JsonlStore(path, ("id",))
    store.append([{"id": "a", "v": 1}, {"id": "a", "v": 2}, {"id": "b", "v": 3}])
    with path.open("a") as handle:
        handle.write('{"id": "c", "v"')
    again = JsonlStore(path, ("id",))
    assert path.read_text().endswith("\n") and len(again) == 2
    again.append([{"id": "b", "v": 9}, {"id": "c", "v": 4}])
    assert [r["id"] for r in read_jsonl(path)] == ["a", "b", "c"]
    assert repair_tail(path) == 0


def test_reader_skips_bad_lines_with_their_number(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    path = tmp_path / "x.jsonl"
    path.write_bytes(b'\xef\xbb\xbf{"id": 1}\n\n{not json\n[1, 2]\n{"id": 2}\n{"id": 3')
    assert read_jsonl(path) == [{"id": 1}, {"id": 2}]
    assert "line 3" in caplog.text and "line 4" in caplog.text and "line 6" not in caplog.text
    assert read_jsonl(tmp_path / "missing.jsonl") == []


def test_writes_are_atomic_and_group_readable(tmp_path: Path) -> None:
    old = os.umask(0o022)
    try:
        write_json(tmp_path / "a.json", {"x": 1})
        append_jsonl(tmp_path / "b.jsonl", [{"x": 1}])
        with open_run(tmp_path / "run", "trace", {}):
            pass
    finally:
        os.umask(old)
    for path in (tmp_path / "a.json", tmp_path / "b.jsonl", tmp_path / "run" / "config.json"):
        assert stat.S_IMODE(path.stat().st_mode) & 0o044 == 0o044, path
    assert [p.name for p in tmp_path.iterdir() if p.name.endswith(".tmp")] == []


def test_a_file_of_a_run_is_not_an_output_target(tmp_path: Path) -> None:
    with open_run(tmp_path / "run", "eval", {}):
        pass
    for name in ("predictions.jsonl", "results.jsonl", "skipped.jsonl", "config.json"):
        with pytest.raises(ValueError, match="is a file of the run"):
            check_writable_target(tmp_path / "run" / name)
    assert check_writable_target(tmp_path / "run" / "set.jsonl").name == "set.jsonl"
    with pytest.raises(ValueError, match="is a folder"):
        check_writable_target(tmp_path / "run")
