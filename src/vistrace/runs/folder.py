"""Run folders: the one layer every command writes its results through.

A run folder holds the files of ONE command (``trace``, ``eval``, ``attend``) made with ONE set
of settings:

- ``config.json``: ``{"command": ..., **settings}``, written when the folder is created and
  checked on every resume; other settings (model, dtype, mode, temperature, dataset, input file)
  or another command are refused with one line, so results are never mixed;
- ``.vistrace.lock``: held while a command writes; a second process on the same folder refuses
  with one line instead of writing every record twice. The processes of a sharded run
  (:mod:`vistrace.runs.shard`) each hold their own: rank 0 this one, rank K ``.vistrace.rank-K.lock``;
- ``<name>.rank-K.<ext>``: the share of ``<name>.<ext>`` written by rank K > 0 of a sharded run
  (:func:`shard_name`); readers see the union (:func:`vistrace.runs.shard.read_union`);
- JSON-lines result files, appended line by line and fsynced (:func:`append_jsonl`); a line cut
  short by a killed run is dropped when the folder is opened again (:func:`repair_tail`);
- other files written atomically (:func:`write_atomic`, :func:`write_json`): a reader sees the old
  file or the new one, never half of one.

Every file written is readable by the group (mode ``0o666`` less the umask, as ``open`` gives),
atomic writes included. :func:`read_jsonl` is the one reader of result files: a line that is not a
JSON object is skipped with a warning naming the file and the line, never a stop.
"""

from __future__ import annotations

import json
import logging
import os
import re
import tempfile
from collections.abc import Callable, Iterable, Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from filelock import FileLock, Timeout

__all__ = [
    "CONFIG_FILE",
    "LOCK_FILE",
    "RUN_FILES",
    "ConfigMismatchError",
    "RunLockedError",
    "append_jsonl",
    "check_writable_target",
    "ensure_folder",
    "iter_jsonl",
    "open_run",
    "read_config",
    "read_jsonl",
    "repair_tail",
    "shard_base",
    "shard_name",
    "write_atomic",
    "write_json",
]

log = logging.getLogger(__name__)

CONFIG_FILE = "config.json"
LOCK_FILE = ".vistrace.lock"
RUN_FILES: frozenset[str] = frozenset(
    {CONFIG_FILE, LOCK_FILE, "results.jsonl", "predictions.jsonl", "skipped.jsonl", "log.json"}
)
"""Files a run folder's own command writes; no other command writes onto them."""


_RANK_NAME = re.compile(r"^(?P<stem>.+)\.rank-(?P<rank>[1-9][0-9]*)(?P<suffix>\.[^.]+)$")


def shard_name(name: str, rank: int) -> str:
    """The file rank `rank` of a sharded run writes for the run file `name`: `name` itself for
    rank 0, `results.rank-2.jsonl` for `results.jsonl` and rank 2."""
    if rank == 0:
        return name
    path = Path(name)
    return f"{path.stem}.rank-{rank}{path.suffix}"


def shard_base(name: str) -> tuple[str, int]:
    """(run file, rank) of a file name written by one rank: the inverse of :func:`shard_name`."""
    match = _RANK_NAME.match(name)
    if match is None:
        return name, 0
    return match["stem"] + match["suffix"], int(match["rank"])


class ConfigMismatchError(ValueError):
    """A run folder holds results made with other settings, or by another command."""


class RunLockedError(ValueError):
    """Another process is writing into the same run folder."""


def _file_mode() -> int:
    """The mode ``open`` gives a new file: ``0o666`` less the process umask."""
    mask = os.umask(0)
    os.umask(mask)
    return 0o666 & ~mask


def ensure_folder(path: str | Path, option: str = "--out") -> Path:
    """``path`` as a folder, created when missing; ValueError (one line) when it is a file."""
    folder = Path(path)
    if folder.exists() and not folder.is_dir():
        raise ValueError(f"{option} {folder} is a file, not a folder; give a folder for the run")
    folder.mkdir(parents=True, exist_ok=True)
    return folder


def check_writable_target(target: str | Path, option: str = "--out") -> Path:
    """``target`` when a command may write a file there; ValueError when it would overwrite a
    run folder's own file (``results.jsonl`` of a trace run, ``predictions.jsonl`` of an eval run…)
    or is a folder."""
    path = Path(target)
    if path.is_dir():
        raise ValueError(f"{option} {path} is a folder; give a file name")
    if shard_base(path.name)[0] in RUN_FILES and (path.parent / CONFIG_FILE).is_file():
        raise ValueError(
            f"{option} {path} is a file of the run in {path.parent}; writing there would replace it. "
            "Choose another file name"
        )
    return path


def write_atomic(path: str | Path, write: Callable[[Path], Any]) -> None:
    """Call ``write(temporary)`` then move the temporary file onto ``path`` (group-readable)."""
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    handle, name = tempfile.mkstemp(dir=target.parent, prefix=f".{target.name}.", suffix=".tmp")
    os.close(handle)
    temporary = Path(name)
    try:
        write(temporary)
        os.chmod(temporary, _file_mode())
        with temporary.open("rb") as synced:
            os.fsync(synced.fileno())
        os.replace(temporary, target)
    except BaseException:
        temporary.unlink(missing_ok=True)
        raise


def write_json(path: str | Path, data: Any, indent: int = 1) -> None:
    """Write ``data`` as UTF-8 JSON, atomically."""
    text = json.dumps(data, indent=indent, ensure_ascii=False) + "\n"
    write_atomic(path, lambda temporary: temporary.write_text(text, encoding="utf-8"))


def repair_tail(path: str | Path) -> int:
    """Cut a last line left incomplete by an interrupted write; the number of bytes dropped."""
    file = Path(path)
    if not file.is_file():
        return 0
    with file.open("rb+") as handle:
        data = handle.read()
        keep = data.rfind(b"\n") + 1
        dropped = len(data) - keep
        if dropped:
            log.warning(
                "%s: dropping an incomplete last line (%d bytes) left by an interrupted run", file, dropped
            )
            handle.truncate(keep)
    return dropped


def append_jsonl(path: str | Path, records: Iterable[Mapping[str, Any]]) -> int:
    """Append ``records`` as JSON lines in one write, flushed and fsynced; the number written."""
    payload = "".join(json.dumps(dict(r), ensure_ascii=False) + "\n" for r in records)
    if not payload:
        return 0
    with Path(path).open("a", encoding="utf-8") as handle:
        handle.write(payload)
        handle.flush()
        os.fsync(handle.fileno())
    return payload.count("\n")


def iter_jsonl(path: str | Path) -> Iterator[tuple[int, dict[str, Any]]]:
    """(line number, record) of every JSON object of ``path``; none when it does not exist.

    Blank lines are passed over; a byte-order mark is ignored; a line that is not a JSON object is
    skipped with a warning naming the file and line; a last line without its newline that is not
    valid JSON (a write cut short) is passed over quietly.
    """
    file = Path(path)
    if not file.is_file():
        return
    with file.open(encoding="utf-8-sig", errors="replace") as handle:
        for number, line in enumerate(handle, start=1):
            if not line.strip():
                continue
            try:
                record = json.loads(line)
            except json.JSONDecodeError as error:
                if line.endswith("\n"):
                    log.warning("%s: line %d skipped: not valid JSON (%s)", file, number, error.msg)
                continue
            if not isinstance(record, dict):
                log.warning("%s: line %d skipped: not a JSON object", file, number)
                continue
            yield number, record


def read_jsonl(path: str | Path) -> list[dict[str, Any]]:
    """The JSON objects of a JSONL result file (see :func:`iter_jsonl`); [] when it does not exist."""
    return [record for _, record in iter_jsonl(path)]


def read_config(folder: str | Path) -> dict[str, Any]:
    """The folder's ``config.json``, or {} when there is none; ValueError when unreadable."""
    path = Path(folder) / CONFIG_FILE
    if not path.is_file():
        return {}
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise ValueError(f"{path}: not valid JSON ({error}); is this a vistrace run folder?") from None
    if not isinstance(data, dict):
        raise ValueError(f"{path}: not a JSON object; is this a vistrace run folder?")
    return data


def _check_config(folder: Path, command: str, config: Mapping[str, Any]) -> None:
    """Write ``config.json`` or check that the one there was made by ``command`` with ``config``."""
    wanted = {"command": command, **config}
    saved = read_config(folder)
    if not saved:
        if any(shard_base(child.name)[0] in RUN_FILES - {LOCK_FILE} for child in folder.iterdir()):
            raise ConfigMismatchError(
                f"{folder} holds results without a {CONFIG_FILE}; use a new output folder"
            )
        write_json(folder / CONFIG_FILE, wanted)
        return
    # Folders written before the command was recorded are taken as this command's.
    saved_command = saved.get("command", command)
    if saved_command != command:
        raise ConfigMismatchError(
            f"{folder} is the run folder of `vistrace {saved_command}`; `vistrace {command}` does not "
            "write there. Use another --out"
        )
    saved = {"command": command, **saved}
    if saved == wanted:
        return
    keys = [k for k in dict.fromkeys([*saved, *wanted]) if saved.get(k) != wanted.get(k)]
    diffs = "; ".join(f"{k}: {saved.get(k)!r} -> {wanted.get(k)!r}" for k in keys)
    raise ConfigMismatchError(
        f"{folder}: the results there were made with other settings ({diffs}); "
        "use a new output folder or the same settings"
    )


@contextmanager
def open_run(folder: str | Path, command: str, config: Mapping[str, Any], rank: int = 0) -> Iterator[Path]:
    """Create or resume the run folder of ``command``: lock it, check or write its config.

    Yields the folder. ``rank``: the process's rank in a sharded run, which holds its own lock
    (:func:`shard_name`); rank 0 holds the lock a one-process run holds, so two launches on one
    folder never write at once. ``RunLockedError`` when another process holds it;
    ``ConfigMismatchError`` when it holds another command's results or other settings; ValueError
    when it is a file.
    """
    root = ensure_folder(folder)
    lock = FileLock(root / shard_name(LOCK_FILE, rank), timeout=0, mode=_file_mode())
    try:
        lock.acquire()
    except Timeout:
        raise RunLockedError(
            f"{root}: another vistrace process is writing this run folder; wait for it to finish "
            "or use another --out"
        ) from None
    try:
        _check_config(root, command, config)
        yield root
    finally:
        lock.release()
