"""Dataset readers by name: the registry behind ``vistrace eval --dataset``.

A reader is a plain function ``read(file, *, questions, images, split) -> ReadResult``: ``file`` the
dataset file (VQAv2: the annotations), ``questions`` the VQAv2 questions file, ``images`` the folder
relative image paths are resolved against (None: the reader's default), ``split`` the split to read
(None: the reader's default). A reader refuses an option it cannot use with a ValueError naming it.
:func:`register_reader` adds one; :data:`READERS` lists the names.
"""

from __future__ import annotations

from collections.abc import KeysView
from pathlib import Path
from typing import Protocol

from vistrace.data.example import DatasetError, ReadResult
from vistrace.data.generic import read_json_records
from vistrace.data.readers import read_docvqa, read_mmhal, read_visual7w, read_vqav2
from vistrace.data.readers_coco import is_karpathy_file, read_coco_captions, read_coco_karpathy
from vistrace.data.readers_text_rich import read_chartqa, read_textvqa

__all__ = ["JSONL_MAPPING", "READERS", "Reader", "read_dataset", "register_reader"]


class Reader(Protocol):
    """A dataset reader, as :func:`read_dataset` calls it."""

    def __call__(
        self, file: Path, *, questions: Path | None, images: Path | None, split: str | None
    ) -> ReadResult: ...


JSONL_MAPPING = {
    "id": "id",
    "image": "image",
    "question": "question",
    "answers": "answers",
    "category": "category",
}
"""Keys of a ``jsonl`` dataset record: ``id``, ``image``, ``question``, ``answers``, ``category``."""

_READERS: dict[str, Reader] = {}
READERS: KeysView[str] = _READERS.keys()
"""The names of the registered readers, in registration order (a live view)."""


def register_reader(name: str, reader: Reader, *, replace: bool = False) -> None:
    """Make ``reader`` the reader of dataset ``name`` (``vistrace eval --dataset NAME``).

    Its examples are prompted with the question as it is (the paper's prompts belong to vqav2,
    visual7w and docvqa) and scored with the metric registered for ``name``
    (:func:`vistrace.data.metrics.register_metric`), else exact match."""
    if not name or not name.strip() or name != name.strip():
        raise ValueError(f"a dataset name is non-empty text without surrounding spaces, not {name!r}")
    if name in _READERS and not replace:
        raise ValueError(f"a reader named {name!r} exists; pass replace=True to override it")
    _READERS[name] = reader


def _one_split(name: str, split: str | None) -> None:
    if split is not None:
        raise ValueError(f"--split applies to visual7w; a {name} file holds one split")


def _vqav2(file: Path, *, questions: Path | None, images: Path | None, split: str | None) -> ReadResult:
    _one_split("vqav2", split)
    if questions is None:
        raise ValueError("VQAv2 needs the questions file (--questions) and the annotations file")
    return read_vqav2(questions, file, images)


def _visual7w(file: Path, *, questions: Path | None, images: Path | None, split: str | None) -> ReadResult:
    return read_visual7w(file, images, split="test" if split is None else split)


def _docvqa(file: Path, *, questions: Path | None, images: Path | None, split: str | None) -> ReadResult:
    _one_split("docvqa", split)
    return read_docvqa(file, images)


def _mmhal(file: Path, *, questions: Path | None, images: Path | None, split: str | None) -> ReadResult:
    _one_split("mmhal", split)
    return read_mmhal(file, images)


def _jsonl(file: Path, *, questions: Path | None, images: Path | None, split: str | None) -> ReadResult:
    _one_split("jsonl", split)
    return read_json_records(file, JSONL_MAPPING, images, dataset="jsonl")


def _textvqa(file: Path, *, questions: Path | None, images: Path | None, split: str | None) -> ReadResult:
    _one_split("textvqa", split)
    return read_textvqa(file, images)


def _chartqa(file: Path, *, questions: Path | None, images: Path | None, split: str | None) -> ReadResult:
    _one_split("chartqa", split)
    return read_chartqa(file, images)


def _coco(file: Path, *, questions: Path | None, images: Path | None, split: str | None) -> ReadResult:
    """A Karpathy-split file (`dataset_coco.json`, `--split`, default test) or an official caption
    file (`captions_val2014.json`, one split), told apart by their top-level keys. Karpathy splits
    may be joined with commas (`train,restval`)."""
    if is_karpathy_file(file):
        splits = ["test"] if split is None else [part.strip() for part in split.split(",")]
        return read_coco_karpathy(file, images, splits)
    _one_split("coco (an official caption file)", split)
    return read_coco_captions(file, images)


for _name, _reader in (
    ("vqav2", _vqav2),
    ("visual7w", _visual7w),
    ("docvqa", _docvqa),
    ("mmhal", _mmhal),
    ("jsonl", _jsonl),
    ("textvqa", _textvqa),
    ("chartqa", _chartqa),
    ("coco", _coco),
):
    register_reader(_name, _reader)


def read_dataset(
    name: str,
    file: str | Path,
    *,
    questions: str | Path | None = None,
    images: str | Path | None = None,
    split: str | None = None,
) -> ReadResult:
    """Read dataset ``name`` from ``file`` (VQAv2: the annotations, with ``questions``).

    ``images``: the folder relative image paths are resolved against (default: the data file's
    folder; VQAv2: the questions file's). ``split``: the Visual7W split (default ``test``); refused
    for the other built-in readers, whose files hold one split each.

    Raises :class:`DatasetError` (one line, naming the file) when the file is not that dataset, the
    split is empty, or no record could be turned into an example.
    """
    reader = _READERS.get(name)
    if reader is None:
        raise ValueError(f"unknown dataset {name!r}; expected one of {', '.join(READERS)}")
    read = reader(
        Path(file),
        questions=None if questions is None else Path(questions),
        images=None if images is None else Path(images),
        split=split,
    )
    if not read.examples:
        source = questions if name == "vqav2" and questions is not None else file
        if read.skipped:
            raise DatasetError(
                f"{source}: no example could be read ({len(read.skipped)} records skipped; first: "
                f"{read.skipped[0].reason})"
            )
        raise DatasetError(f"{source}: no records")
    return read
