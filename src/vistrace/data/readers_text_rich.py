"""Readers for the official files of TextVQA, ChartQA and COCO captions (Karpathy split and the
official ``captions_*.json`` annotations).

Drafted outside the repository against the post-move layout (``vistrace.data.*``); to integrate,
append the functions to ``vistrace/data/readers.py`` (same imports) and register them as described
in ``datasets.md``. Conventions are those of ``readers.py``: each reader returns a
:class:`ReadResult` (examples in file order, skipped records with a one-line reason), a file that
cannot be read at all raises :class:`DatasetError`, images are referenced and never opened, ids are
checked (string or integer, unique within one call) and every unused source field goes to
``extra``.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

from vistrace.data._records import (
    BadRecord,
    Collector,
    as_id,
    as_string,
    as_text,
    list_field,
    load_json,
    load_records,
    other_fields,
    require,
    require_dict,
)
from vistrace.data.example import DatasetError, Example, ReadResult, Skipped
from vistrace.images import resolve_image

__all__ = [
    "CHARTQA_IMAGE_DIR",
    "COCO_CAPTION_PROMPT",
    "COCO_SPLITS",
    "FGTRACER_TEXTVQA_CLASSES",
    "TEXTVQA_IMAGE_DIRS",
    "read_chartqa",
    "read_textvqa",
]

TEXTVQA_IMAGE_DIRS: dict[str, str] = {"train": "train_images", "val": "train_images", "test": "test_images"}
"""Image folder per ``set_name``, as ``train_val_images.zip`` / ``test_images.zip`` unpack (the HF
``textvqa`` builder maps ``set_name != "test"`` to ``train_images``)."""

FGTRACER_TEXTVQA_CLASSES: tuple[str, ...] = (
    "Drink",
    "Bottle",
    "Person",
    "Man",
    "Sports equipment",
    "Sports uniform",
    "Vehicle",
    "Clothing",
    "Book",
    "Poster",
)
"""The ten ``image_classes`` FG-TRACER groups TextVQA val questions by
(``LLaMAVision/tracing_information_flow/dataset/textvqa/filter_image_classes_textvqa.json``; a
question is kept when any of its classes is one of them and counted in each)."""

CHARTQA_IMAGE_DIR = "png"
"""Folder of the chart images next to ``test_human.json`` / ``test_augmented.json`` in the release."""

COCO_SPLITS: tuple[str, ...] = ("train", "restval", "val", "test")
"""The ``split`` values of the Karpathy ``dataset_coco.json`` (113,287 = train + restval, 5,000 val,
5,000 test images)."""

COCO_CAPTION_PROMPT = "Provide a detailed description for the given image in one sentence."
"""FG-TRACER's captioning instruction (``{LLaVA,LLaMAVision,Qwen2.5_VL}/coco.py``), used as the
``question`` of every COCO example."""


def _plain_name(value: str, key: str) -> str:
    """A single path component (no separator, not ``.``/``..``): ids and names joined to a folder."""
    if "/" in value or "\\" in value or value.strip() in (".", "..") or value != value.strip():
        raise BadRecord(f"{key!r} must be a plain file name, found {value!r}")
    return value


def _string_list(value: Any, key: str, *, allow_empty: bool = False) -> list[str]:
    """A JSON list of strings (types checked, never converted)."""
    if not isinstance(value, list):
        raise BadRecord(f"{key!r} must be a list, found {type(value).__name__}")
    bad = next((item for item in value if not isinstance(item, str)), None)
    if bad is not None:
        raise BadRecord(f"{key!r} must hold strings, found {type(bad).__name__}")
    if not allow_empty and not any(item.strip() for item in value):
        raise BadRecord(f"empty {key!r}")
    return value


# ---------------------------------------------------------------- TextVQA


def _ocr_tokens_by_image(ocr_file: str | Path) -> dict[str, list[str]]:
    """``image_id`` -> ``ocr_tokens`` of a ``TextVQA_Rosetta_OCR_v0.2_<split>.json`` file.

    Entries that are not objects, lack a string ``image_id`` or a list-of-strings ``ocr_tokens``
    are left out (their questions are then skipped, naming the OCR file); a repeated image keeps
    its first entry.
    """
    tokens: dict[str, list[str]] = {}
    for entry in list_field(load_json(ocr_file), "data", ocr_file):
        if not isinstance(entry, dict) or not isinstance(entry.get("image_id"), str):
            continue
        value = entry.get("ocr_tokens")
        if isinstance(value, list) and all(isinstance(token, str) for token in value):
            tokens.setdefault(entry["image_id"], value)
    return tokens


def read_textvqa(
    file: str | Path,
    images_dir: str | Path | None = None,
    *,
    ocr_file: str | Path | None = None,
    category_classes: Sequence[str] | None = None,
) -> ReadResult:
    """TextVQA questions of an official ``TextVQA_0.5.1_<split>.json`` file (``data`` list).

    ``id`` is ``question_id``; ``image`` is ``<image_id>.jpg`` in ``images_dir`` when given, else in
    ``train_images/`` (``set_name`` train or val) or ``test_images/`` (test) next to the file, as the
    release's zips unpack. ``answers`` are the ten annotators' answers; a test record (``set_name``
    ``test``) has none (the key is absent; HF exports hold ten empty strings: both give ``()``).
    ``extra`` keeps every other field (``image_id``, ``image_classes``, ``question_tokens``, the
    Flickr URLs, ...).

    OCR tokens: the 0.5.1 question files carry none; they are in the separate Rosetta file
    ``TextVQA_Rosetta_OCR_v0.2_<split>.json`` (``data``: ``image_id``, ``ocr_tokens``,
    ``ocr_info``). With ``ocr_file`` they are joined by ``image_id`` into ``extra["ocr_tokens"]``
    (a question whose image is not in that file is skipped); a record that already has
    ``ocr_tokens`` (e.g. an export of ``lmms-lab/textvqa``) keeps its own. LLaVA-1.5's
    "Reference OCR token" prompt reads them from ``extra``.

    ``categories``: none by default (TextVQA has no question types); with ``category_classes``
    (e.g. :data:`FGTRACER_TEXTVQA_CLASSES`) every ``image_classes`` entry in that set, in record
    order, so per-category results count the question in each, as FG-TRACER's
    ``create_textvqa.py`` does.
    """
    data = load_json(file)
    records = list_field(data, "data", file)
    ocr = None if ocr_file is None else _ocr_tokens_by_image(ocr_file)
    wanted = None if category_classes is None else set(category_classes)
    file_split = data.get("dataset_type") if isinstance(data, dict) else None
    collector = Collector(file)
    for index, raw in enumerate(records):
        where = f"record {index}"
        record_id: str | None = None
        try:
            record = require_dict(raw)
            record_id = as_id(require(record, "question_id"), "question_id")
            image_id = _plain_name(as_string(require(record, "image_id"), "image_id"), "image_id")
            set_name = record.get("set_name", file_split)
            answers: tuple[str, ...] = ()
            if set_name != "test":
                answers = tuple(_string_list(require(record, "answers"), "answers"))
            elif record.get("answers") is not None:  # test: absent, or ten "" in HF exports
                answers = tuple(_string_list(record["answers"], "answers", allow_empty=True))
                answers = answers if any(a.strip() for a in answers) else ()
            extra = other_fields(record, {"question", "answers"})
            if "ocr_tokens" in record:
                extra["ocr_tokens"] = _string_list(record["ocr_tokens"], "ocr_tokens", allow_empty=True)
            elif ocr is not None:
                if image_id not in ocr:
                    raise BadRecord(f"image_id {image_id!r} has no entry in {ocr_file}")
                extra["ocr_tokens"] = ocr[image_id]
            classes = record.get("image_classes")
            categories: tuple[str, ...] = ()
            if wanted is not None:
                names = _string_list(classes, "image_classes", allow_empty=True) if classes else []
                categories = tuple(dict.fromkeys(name for name in names if name in wanted))
            name = f"{image_id}.jpg"
            if images_dir is None:
                name = f"{TEXTVQA_IMAGE_DIRS.get(str(set_name), 'train_images')}/{name}"
            example = Example(
                id=record_id,
                image=resolve_image(name, file, images_dir),
                question=as_text(require(record, "question"), "question"),
                answers=answers,
                categories=categories,
                dataset="textvqa",
                extra=extra,
            )
        except BadRecord as exc:
            collector.skip(where, record_id, str(exc))
            continue
        collector.add(where, example)
    return collector.result()


# ---------------------------------------------------------------- ChartQA


def _chartqa_files(path: Path) -> list[Path]:
    """The annotation files of one ChartQA split folder: ``*_human.json`` then ``*_augmented.json``."""
    human = sorted(path.glob("*_human.json"))
    augmented = sorted(path.glob("*_augmented.json"))
    if not human and not augmented:
        raise DatasetError(f"{path}: no *_human.json or *_augmented.json in this folder")
    return [*human, *augmented]


def _chartqa_category(stem: str) -> str | None:
    """``human`` / ``augmented`` from a release file name (``test_human`` -> ``human``), else None."""
    for name in ("human", "augmented"):
        if stem == name or stem.endswith(f"_{name}"):
            return name
    return None


def read_chartqa(path: str | Path, images_dir: str | Path | None = None) -> ReadResult:
    """ChartQA questions of the official release (``vis-nlp/ChartQA``, ``ChartQA Dataset/<split>/``).

    ``path`` is one annotation file (``test_human.json``: a JSON list of ``{"imgname", "query",
    "label"}``) or a split folder, read as its ``*_human.json`` then its ``*_augmented.json`` (the
    order FG-TRACER concatenates them in). The records have no id: ``id`` is
    ``<file stem>:<position>`` (``test_human:0``), stable and unique across both files.
    ``image`` is ``imgname`` in ``images_dir`` when given, else in the ``png/`` folder next to the
    file. ``answers`` is ``(label,)``; ``category`` is ``human`` or ``augmented`` from the file name
    (the paper reports the two sets separately). ``extra`` keeps ``imgname``, any other field and
    ``source`` (the file stem).
    """
    root = Path(path)
    files = _chartqa_files(root) if root.is_dir() else [root]
    examples: list[Example] = []
    skipped: list[Skipped] = []
    for file in files:
        collector = Collector(file)
        stem = file.stem
        category = _chartqa_category(stem)
        for index, (where, raw) in enumerate(load_records(file)):
            record_id = f"{stem}:{index}"
            try:
                record = require_dict(raw)
                imgname = _plain_name(as_string(require(record, "imgname"), "imgname"), "imgname")
                name = imgname if images_dir is not None else f"{CHARTQA_IMAGE_DIR}/{imgname}"
                extra = other_fields(record, {"query", "label"})
                extra["source"] = stem
                example = Example(
                    id=record_id,
                    image=resolve_image(name, file, images_dir),
                    question=as_text(require(record, "query"), "query"),
                    answers=(as_text(require(record, "label"), "label"),),
                    category=category,
                    dataset="chartqa",
                    extra=extra,
                )
            except BadRecord as exc:
                collector.skip(where, record_id, str(exc))
                continue
            collector.add(where, example)
        examples.extend(collector.examples)
        skipped.extend(collector.skipped)
    return ReadResult(examples=examples, skipped=skipped)


# ---------------------------------------------------------------- COCO captions
