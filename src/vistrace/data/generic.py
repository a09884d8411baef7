"""Readers for any JSON / JSONL file and any HF dataset on disk, given a key mapping."""

from __future__ import annotations

import importlib
import io
import json
from collections.abc import Iterable, Mapping
from pathlib import Path
from types import ModuleType
from typing import Any

from vistrace.data._records import (
    BadRecord,
    Collector,
    as_id,
    as_string,
    as_text,
    as_text_list,
    image_reference,
    load_records,
    other_fields,
    require,
    require_dict,
)
from vistrace.data.example import DatasetError, Example, ReadResult

__all__ = ["MAPPING_FIELDS", "read_hf_disk", "read_json_records", "records_to_examples"]

MAPPING_FIELDS = frozenset({"id", "image", "question", "answers", "category", "choices"})
_REQUIRED_FIELDS = ("image", "question")


def _check_mapping(mapping: Mapping[str, str]) -> None:
    """Raise ValueError for a mapping with unknown or missing example fields."""
    unknown = sorted(set(mapping) - MAPPING_FIELDS)
    if unknown:
        raise ValueError(f"unknown mapping fields {unknown}; expected some of {sorted(MAPPING_FIELDS)}")
    missing = [name for name in _REQUIRED_FIELDS if name not in mapping]
    if missing:
        raise ValueError(f"mapping must name the source keys of {missing}")


def _image_field(
    value: Any, key: str, source: str | Path, images_dir: str | Path | None
) -> tuple[Path | None, str | None, bytes | None]:
    """(path, URL, embedded bytes) of an image value: a path, a URL, ``{"bytes", "path"}`` or a PIL image.

    The path is None for an embedded image that names no file.
    """
    if isinstance(value, str):
        local, url = image_reference(as_string(value, key), source, images_dir)
        return local, url, None
    path: Path | None = None
    url = None
    if isinstance(value, dict):
        data = value.get("bytes")
        name = value.get("path")
        if data is not None and not isinstance(data, (bytes, bytearray)):
            raise BadRecord(f"{key!r} bytes must be binary, found {type(data).__name__}")
        if data is None and not name:
            raise BadRecord(f"{key!r} has neither 'bytes' nor 'path'")
        if name:
            path, url = image_reference(str(name), source, images_dir)
        return path, url, None if data is None else bytes(data)
    if hasattr(value, "save"):
        buffer = io.BytesIO()
        value.save(buffer, format="PNG")
        name = getattr(value, "filename", "") or ""
        if name:
            path, url = image_reference(str(name), source, images_dir)
        return path, url, buffer.getvalue()
    raise BadRecord(f"{key!r} must be a path, a URL or an image, found {type(value).__name__}")


def records_to_examples(
    records: Iterable[tuple[str, Any]],
    mapping: Mapping[str, str],
    images_dir: str | Path | None,
    source: str | Path,
    dataset: str,
) -> ReadResult:
    """Examples from (location, record) pairs through a key mapping; see :func:`read_json_records`."""
    _check_mapping(mapping)
    collector = Collector(source)
    used = {mapping[name] for name in ("image", "question", "answers", "choices") if name in mapping}
    for index, (where, raw) in enumerate(records):
        record_id: str | None = None
        try:
            record = require_dict(raw)
            id_key = mapping.get("id")
            record_id = str(index) if id_key is None else as_id(require(record, id_key), id_key)
            image_key = mapping["image"]
            image, url, data = _image_field(require(record, image_key), image_key, source, images_dir)
            answers: tuple[str, ...] = ()
            if "answers" in mapping:
                answers = as_text_list(require(record, mapping["answers"]), mapping["answers"])
            choices: tuple[str, ...] | None = None
            if "choices" in mapping:
                choices = as_text_list(require(record, mapping["choices"]), mapping["choices"])
            value = record.get(mapping["category"]) if "category" in mapping else None
            values = value if isinstance(value, list) else [] if value is None else [value]
            categories = tuple(dict.fromkeys(str(item) for item in values if item is not None))
            example = Example(
                id=record_id,
                image=Path(f"{record_id}.png") if image is None else image,
                question=as_text(require(record, mapping["question"]), mapping["question"]),
                answers=answers,
                categories=categories,
                choices=choices,
                dataset=dataset,
                extra=other_fields(record, used),
                image_url=url,
                image_bytes=data,
            )
        except BadRecord as exc:
            collector.skip(where, record_id, str(exc))
            continue
        collector.add(where, example)
    return collector.result()


def read_json_records(
    file: str | Path,
    mapping: Mapping[str, str],
    images_dir: str | Path | None = None,
    *,
    records_key: str | None = None,
    dataset: str = "json",
) -> ReadResult:
    """Examples from a JSON list (or the list under ``records_key``) or a JSONL file.

    ``mapping`` maps example fields to source keys, e.g. ``{"id": "qid", "image": "img",
    "question": "q", "answers": "a"}``. ``image`` and ``question`` are required; ``id`` defaults to
    the record's position; ``answers`` (a string, a list of strings, or VQA-style
    ``[{"answer": ...}]``) defaults to none; ``category`` may be a list, each item a category of
    the question (per-category results count it in each);
    ``choices`` is a list of strings. Images given as URLs are handled as in ``read_mmhal``; relative image
    paths are resolved against ``images_dir``, else the file's folder.
    ``extra`` keeps every source key not mapped to image, question, answers or choices.
    """
    _check_mapping(mapping)
    return records_to_examples(load_records(file, records_key), mapping, images_dir, file, dataset)


def _optional_import(name: str) -> ModuleType | None:
    """The module, or None when it is not installed."""
    try:
        return importlib.import_module(name)
    except ImportError:
        return None


def _pick_split(splits: list[str], split: str | None, root: Path) -> str:
    """The split to read among those saved under ``root``."""
    if split is not None:
        if split not in splits:
            raise DatasetError(f"{root}: no split {split!r}; saved splits: {', '.join(splits)}")
        return split
    if len(splits) != 1:
        raise DatasetError(f"{root}: several splits saved ({', '.join(splits)}); choose one with split=")
    return splits[0]


def _saved_dataset_rows(root: Path, split: str | None) -> Iterable[tuple[str, Any]]:
    """Rows of a ``Dataset.save_to_disk`` / ``DatasetDict.save_to_disk`` directory."""
    hf = _optional_import("datasets")
    if hf is not None:
        loaded = hf.load_from_disk(str(root))
        if isinstance(loaded, hf.DatasetDict):
            loaded = loaded[_pick_split(list(loaded.keys()), split, root)]
        for name, feature in loaded.features.items():
            if isinstance(feature, hf.Image):
                loaded = loaded.cast_column(name, hf.Image(decode=False))
        return ((f"row {index}", row) for index, row in enumerate(loaded))
    pa = _optional_import("pyarrow")
    if pa is None:
        raise DatasetError(
            f"{root}: reading a saved HF dataset needs the 'datasets' package (pip install datasets) "
            "or 'pyarrow' (pip install pyarrow)"
        )
    folder = root
    if (root / "dataset_dict.json").is_file():
        splits = json.loads((root / "dataset_dict.json").read_text(encoding="utf-8")).get("splits", [])
        folder = root / _pick_split(list(splits), split, root)
    state = json.loads((folder / "state.json").read_text(encoding="utf-8"))
    rows: list[dict[str, Any]] = []
    for entry in state.get("_data_files", []):
        with pa.memory_map(str(folder / entry["filename"])) as stream:
            rows.extend(pa.ipc.open_stream(stream).read_all().to_pylist())
    return ((f"row {index}", row) for index, row in enumerate(rows))


def _parquet_rows(root: Path, split: str | None) -> Iterable[tuple[str, Any]]:
    """Rows of one parquet file or of every parquet file under a directory (of one split)."""
    files = [root] if root.is_file() else sorted(root.rglob("*.parquet"))
    if split is not None and root.is_dir():
        files = [
            f for f in files if split in f.relative_to(root).parts[:-1] or f.name.startswith(f"{split}-")
        ]
    if not files:
        raise DatasetError(f"{root}: no parquet files{'' if split is None else f' for split {split!r}'}")
    pq = _optional_import("pyarrow.parquet")
    if pq is None:
        raise DatasetError(f"{root}: reading parquet needs the 'pyarrow' package (pip install pyarrow)")
    rows: list[dict[str, Any]] = []
    for file in files:
        rows.extend(pq.read_table(str(file)).to_pylist())
    return ((f"row {index}", row) for index, row in enumerate(rows))


def read_hf_disk(
    path: str | Path,
    mapping: Mapping[str, str],
    images_dir: str | Path | None = None,
    *,
    split: str | None = None,
    dataset: str = "hf",
) -> ReadResult:
    """Examples from an HF dataset on disk: a ``save_to_disk`` directory, a parquet file, or a
    directory of parquet files (e.g. a hub snapshot's ``data/``).

    A ``save_to_disk`` directory is read with ``datasets.load_from_disk`` when ``datasets`` is
    installed, else with ``pyarrow``; parquet needs ``pyarrow``. Neither is a dependency of
    vistrace: a DatasetError names the package to install. ``split`` picks one split of a
    ``DatasetDict`` or the parquet files of that split. Image columns may hold paths, URLs or
    embedded images (``{"bytes", "path"}``); embedded bytes stay in memory in ``image_bytes``,
    decoded only by ``load_image``. ``mapping`` is as in :func:`read_json_records`.
    """
    _check_mapping(mapping)
    root = Path(path)
    if not root.exists():
        raise DatasetError(f"{root}: not found")
    saved = root / "dataset_dict.json" if (root / "dataset_dict.json").is_file() else root / "state.json"
    if root.is_dir() and saved.is_file():
        rows = _saved_dataset_rows(root, split)
    elif root.suffix == ".parquet" or root.is_dir():
        rows = _parquet_rows(root, split)
    else:
        raise DatasetError(f"{root}: not a saved HF dataset (dataset_dict.json, state.json) or parquet")
    return records_to_examples(rows, mapping, images_dir, root, dataset)
