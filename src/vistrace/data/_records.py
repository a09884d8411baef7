"""Shared pieces of the readers: file loading, record checks, image references, skip bookkeeping."""

from __future__ import annotations

import json
from collections.abc import Iterator, Mapping
from pathlib import Path, PurePosixPath
from typing import Any
from urllib.parse import unquote, urlparse

from vistrace.data.example import DatasetError, Example, ReadResult, Skipped
from vistrace.images import image_base, resolve_image

JSONL_SUFFIXES = (".jsonl", ".ndjson")
URL_SCHEMES = ("http", "https")


class BadRecord(Exception):
    """A record that cannot become an example; the message is the problem, without the location."""


class BadLine:
    """A JSONL line that is not valid JSON, kept in place of its record so it can be reported."""

    def __init__(self, problem: str) -> None:
        self.problem = problem


class Collector:
    """Accumulates the examples and skipped records of one reader call."""

    def __init__(self, source: str | Path) -> None:
        self.source = str(source)
        self.examples: list[Example] = []
        self.skipped: list[Skipped] = []
        self._seen: dict[str, str] = {}

    def skip(self, where: str, record_id: str | None, problem: str) -> None:
        """Record a skipped record with a one-line reason naming the file, position and id."""
        label = where if record_id is None else f"{where} (id {record_id})"
        self.skipped.append(Skipped(record_id, self.source, f"{self.source}: {label}: {problem}"))

    def add(self, where: str, example: Example) -> None:
        """Keep an example, or skip it, naming both places, when its id was already seen in this call."""
        if example.id in self._seen:
            self.skip(where, example.id, f"duplicate id, also at {self._seen[example.id]}; the first is kept")
            return
        self._seen[example.id] = where
        self.examples.append(example)

    def result(self) -> ReadResult:
        """The examples and skipped records collected so far."""
        return ReadResult(examples=self.examples, skipped=self.skipped)


def load_json(path: str | Path) -> Any:
    """The parsed content of a JSON file; DatasetError when it is missing or not valid JSON."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8-sig")
    except FileNotFoundError:
        raise DatasetError(f"{path}: file not found") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise DatasetError(f"{path}: cannot read ({exc})") from exc
    try:
        return json.loads(text)
    except json.JSONDecodeError as exc:
        raise DatasetError(f"{path}: not valid JSON ({exc})") from exc


def _jsonl(text: str) -> Iterator[tuple[str, Any]]:
    """(location, record) for each non-blank line; invalid lines give a :class:`BadLine`."""
    # Only "\n" ends a JSON line: str.splitlines would also split at U+2028, U+0085 and other
    # characters that JSON strings may hold unescaped, cutting such a record in two.
    for number, line in enumerate(text.split("\n"), start=1):
        if not line.strip():
            continue
        try:
            yield f"line {number}", json.loads(line)
        except json.JSONDecodeError as exc:
            yield f"line {number}", BadLine(f"not valid JSON ({exc.msg})")


def load_records(path: str | Path, records_key: str | None = None) -> list[tuple[str, Any]]:
    """(location, record) pairs of a JSON list, a JSON object's list under ``records_key``, or JSONL.

    ``.jsonl``/``.ndjson`` files are read line by line; other files as JSON, falling back to JSONL
    when the whole file is not valid JSON but its first line is.
    """
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8-sig")
    except FileNotFoundError:
        raise DatasetError(f"{path}: file not found") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise DatasetError(f"{path}: cannot read ({exc})") from exc
    if path.suffix.lower() in JSONL_SUFFIXES:
        return list(_jsonl(text))
    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        first = next((line for line in text.split("\n") if line.strip()), "")
        try:
            json.loads(first)
        except json.JSONDecodeError:
            raise DatasetError(f"{path}: neither JSON nor JSONL ({exc})") from exc
        return list(_jsonl(text))
    if records_key is not None:
        if not isinstance(data, dict) or records_key not in data:
            raise DatasetError(f"{path}: expected a JSON object with key {records_key!r}")
        data = data[records_key]
    if not isinstance(data, list):
        found = type(data).__name__
        raise DatasetError(f"{path}: expected a JSON list of records, found {found}")
    return [(f"record {index}", record) for index, record in enumerate(data)]


def list_field(container: Any, key: str, path: str | Path) -> list[Any]:
    """``container[key]`` of a dataset file's top level, which must be a list."""
    if not isinstance(container, dict) or key not in container:
        raise DatasetError(f"{path}: expected a JSON object with key {key!r}")
    value = container[key]
    if not isinstance(value, list):
        raise DatasetError(f"{path}: {key!r} must be a list, found {type(value).__name__}")
    return value


def require_dict(record: Any) -> dict[str, Any]:
    """The record itself, which must be a JSON object."""
    if isinstance(record, BadLine):
        raise BadRecord(record.problem)
    if not isinstance(record, dict):
        raise BadRecord(f"expected an object, found {type(record).__name__}")
    return record


def require(record: Mapping[str, Any], key: str) -> Any:
    """``record[key]``, which must be present and not null."""
    if key not in record:
        raise BadRecord(f"missing key {key!r}")
    value = record[key]
    if value is None:
        raise BadRecord(f"key {key!r} is null")
    return value


def as_id(value: Any, key: str) -> str:
    """An id value (string or integer) as a string."""
    if isinstance(value, bool) or not isinstance(value, (str, int)):
        raise BadRecord(f"{key!r} must be a string or an integer, found {type(value).__name__}")
    text = str(value).strip()
    if not text:
        raise BadRecord(f"empty {key!r}")
    return text


def as_text(value: Any, key: str) -> str:
    """A non-empty string value (numbers are converted; surrounding whitespace is kept)."""
    if isinstance(value, bool) or not isinstance(value, (str, int, float)):
        raise BadRecord(f"{key!r} must be a string, found {type(value).__name__}")
    text = str(value)
    if not text.strip():
        raise BadRecord(f"empty {key!r}")
    return text


def as_string(value: Any, key: str) -> str:
    """A non-empty string value; other types are refused."""
    if not isinstance(value, str):
        raise BadRecord(f"{key!r} must be a string, found {type(value).__name__}")
    if not value.strip():
        raise BadRecord(f"empty {key!r}")
    return value


def as_text_list(value: Any, key: str) -> tuple[str, ...]:
    """A non-empty list of strings (or one string); VQA-style ``{"answer": ...}`` items accepted."""
    items = value if isinstance(value, (list, tuple)) else [value]
    texts: list[str] = []
    for item in items:
        text_item = item.get("answer") if isinstance(item, dict) else item
        if isinstance(text_item, bool) or not isinstance(text_item, (str, int, float)):
            raise BadRecord(f"{key!r} must hold strings, found {type(text_item).__name__}")
        texts.append(str(text_item))
    if not any(text.strip() for text in texts):
        raise BadRecord(f"empty {key!r}")
    return tuple(texts)


def is_url(value: str) -> bool:
    """Whether a string is an http(s) URL."""
    return urlparse(value).scheme.lower() in URL_SCHEMES


def image_reference(
    value: str, data_file: str | Path, images_dir: str | Path | None
) -> tuple[Path, str | None]:
    """(absolute local path, URL or None) of an image given as a path or a URL in ``data_file``.

    A relative path is resolved by :func:`vistrace.images.resolve_image`: against ``images_dir``
    when one is given, else against the data file's folder. A URL is mapped to the file of the same
    base name in that folder; the URL is returned too.
    """
    if is_url(value):
        name = PurePosixPath(unquote(urlparse(value).path)).name
        if not name:
            raise BadRecord(f"image URL {value} has no file name")
        return image_base(data_file, images_dir) / name, value
    return resolve_image(value, data_file, images_dir), None


def other_fields(record: Mapping[str, Any], used: set[str] | frozenset[str]) -> dict[str, Any]:
    """A copy of the record without the keys in ``used``."""
    return {key: value for key, value in record.items() if key not in used}
