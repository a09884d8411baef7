"""Resumable JSON-lines result files keyed by a tuple of fields (on top of :mod:`vistrace.runs.folder`).

Each record is one line, written whole and fsynced. A run killed mid-write leaves at most one
partial last line; opening the file again drops it, so a re-run neither loses nor duplicates work.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

from vistrace.runs.folder import append_jsonl, read_jsonl, repair_tail

__all__ = ["JsonlStore", "read_records"]


def read_records(path: Path) -> Iterator[dict[str, Any]]:
    """Every complete JSON record of `path` (none when it does not exist); see :func:`read_jsonl`."""
    yield from read_jsonl(path)


class JsonlStore:
    """Append-only records keyed by a tuple of fields; `done(key)` says whether one is written."""

    def __init__(self, path: Path, key_fields: tuple[str, ...]):
        self.path = path
        self.key_fields = key_fields
        path.parent.mkdir(parents=True, exist_ok=True)
        repair_tail(path)
        self._keys = {self.key_of(record) for record in read_jsonl(path)}

    def key_of(self, record: dict[str, Any]) -> tuple[Any, ...]:
        return tuple(json.dumps(record.get(field), sort_keys=True) for field in self.key_fields)

    def remember(self, records: Iterable[dict[str, Any]]) -> None:
        """Count `records`, written elsewhere (another rank's file), as done."""
        self._keys.update(self.key_of(record) for record in records)

    def done(self, record_key: dict[str, Any]) -> bool:
        return self.key_of(record_key) in self._keys

    def __len__(self) -> int:
        return len(self._keys)

    def append(self, records: list[dict[str, Any]]) -> None:
        """Write `records` (skipping keys already present) and flush them to disk."""
        fresh: dict[tuple[Any, ...], dict[str, Any]] = {}
        for record in records:
            key = self.key_of(record)
            if key not in self._keys:
                fresh.setdefault(key, record)
        append_jsonl(self.path, fresh.values())
        self._keys.update(fresh)
