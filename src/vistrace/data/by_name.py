"""One entry point for the readers, by dataset name, as ``vistrace eval`` calls them."""

from __future__ import annotations

from pathlib import Path

from vistrace.data.example import DatasetError, ReadResult
from vistrace.data.generic import read_json_records
from vistrace.data.readers import read_docvqa, read_mmhal, read_visual7w, read_vqav2

__all__ = ["JSONL_MAPPING", "READERS", "read_dataset"]

READERS: tuple[str, ...] = ("vqav2", "visual7w", "docvqa", "mmhal", "jsonl")
JSONL_MAPPING = {
    "id": "id",
    "image": "image",
    "question": "question",
    "answers": "answers",
    "category": "category",
}
"""Keys of a ``jsonl`` dataset record: ``id``, ``image``, ``question``, ``answers``, ``category``."""


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
    for the other readers, whose files hold one split each.

    Raises :class:`DatasetError` (one line, naming the file) when the file is not that dataset, the
    split is empty, or no record could be turned into an example.
    """
    if name not in READERS:
        raise ValueError(f"unknown dataset {name!r}; expected one of {', '.join(READERS)}")
    if split is not None and name != "visual7w":
        raise ValueError(f"--split applies to visual7w; a {name} file holds one split")
    if name == "vqav2":
        if questions is None:
            raise ValueError("VQAv2 needs the questions file (--questions) and the annotations file")
        read = read_vqav2(questions, file, images)
    elif name == "visual7w":
        read = read_visual7w(file, images, split="test" if split is None else split)
    elif name == "docvqa":
        read = read_docvqa(file, images)
    elif name == "mmhal":
        read = read_mmhal(file, images)
    else:
        read = read_json_records(file, JSONL_MAPPING, images, dataset="jsonl")
    if not read.examples:
        source = questions if name == "vqav2" else file
        if read.skipped:
            raise DatasetError(
                f"{source}: no example could be read ({len(read.skipped)} records skipped; first: "
                f"{read.skipped[0].reason})"
            )
        raise DatasetError(f"{source}: no records")
    return read
