"""COCO captions: Karpathy's split file (`dataset_coco.json`) and the official caption files
(`captions_<split>.json`), one example per image with its reference captions."""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Iterable, Sequence
from pathlib import Path, PurePosixPath
from typing import Any

from vistrace.data._records import (
    BadRecord,
    Collector,
    as_id,
    as_string,
    list_field,
    load_json,
    other_fields,
    require,
    require_dict,
)
from vistrace.data.example import DatasetError, Example, ReadResult
from vistrace.data.readers_text_rich import COCO_CAPTION_PROMPT, _plain_name
from vistrace.images import resolve_image


def _coco_split_counts(images: Iterable[Any]) -> Counter[str]:
    """Images per ``split`` value of a Karpathy ``images`` list."""
    return Counter(str(image.get("split")) for image in images if isinstance(image, dict))


def _sentences(value: Any) -> tuple[str, ...]:
    """The ``raw`` text of each Karpathy sentence, as written (trailing spaces included)."""
    if not isinstance(value, list) or not value:
        raise BadRecord("'sentences' must be a non-empty list")
    texts = []
    for sentence in value:
        if not isinstance(sentence, dict):
            raise BadRecord(f"'sentences' must hold objects, found {type(sentence).__name__}")
        texts.append(as_string(require(sentence, "raw"), "sentences raw"))
    return tuple(texts)


def read_coco_karpathy(
    file: str | Path,
    images_dir: str | Path | None = None,
    split: str | Sequence[str] | None = "test",
    *,
    prompt: str = COCO_CAPTION_PROMPT,
) -> ReadResult:
    """COCO images of one Karpathy split (``dataset_coco.json``; ``split=None``: all splits; a
    sequence such as ``("train", "restval")``: those splits).

    ``id`` is ``cocoid`` (the COCO image id, as COCO's own caption evaluation keys it);
    ``image`` is ``<filepath>/<filename>`` (``val2014/COCO_val2014_....jpg``) under ``images_dir``,
    else under the file's folder; ``question`` is ``prompt`` (the captioning instruction);
    ``answers`` are the reference captions (each sentence's ``raw``, unchanged); ``category`` is
    None. ``extra`` keeps every other image field (``split``, ``filepath``, ``filename``,
    ``imgid``, ``sentids``, ``cocoid``); the sentences' ``tokens`` are not kept.

    Raises :class:`DatasetError` when the file is not the ``coco`` Karpathy file (``dataset`` other
    than ``coco``: Flickr8k/30k use the same layout) or when no image is in ``split`` (the message
    lists the splits present with their image counts).
    """
    data = load_json(file)
    images = list_field(data, "images", file)
    name = data.get("dataset")
    if name is not None and name != "coco":
        raise DatasetError(f"{file}: a Karpathy file of dataset {name!r}, not 'coco'")
    wanted = None if split is None else {split} if isinstance(split, str) else set(split)
    counts = _coco_split_counts(images)
    if wanted is not None and not any(counts[s] for s in wanted):
        present = ", ".join(f"{s} ({n})" for s, n in sorted(counts.items())) or "none"
        raise DatasetError(f"{file}: no image in split {split!r}; splits present: {present}")
    collector = Collector(file)
    for index, raw in enumerate(images):
        where = f"image {index}"
        record_id: str | None = None
        try:
            record = require_dict(raw)
            if wanted is not None and record.get("split") not in wanted:
                continue
            record_id = as_id(require(record, "cocoid"), "cocoid")
            folder = _plain_name(as_string(require(record, "filepath"), "filepath"), "filepath")
            filename = _plain_name(as_string(require(record, "filename"), "filename"), "filename")
            example = Example(
                id=record_id,
                image=resolve_image(str(PurePosixPath(folder, filename)), file, images_dir),
                question=prompt,
                answers=_sentences(require(record, "sentences")),
                dataset="coco",
                extra=other_fields(record, {"sentences"}),
            )
        except BadRecord as exc:
            collector.skip(where, record_id, str(exc))
            continue
        collector.add(where, example)
    return collector.result()


def _captions_by_image(annotations: list[Any], collector: Collector) -> dict[str, list[str]]:
    """``image_id`` -> captions, in file order; bad annotations are skipped with a reason."""
    captions: dict[str, list[str]] = {}
    for index, raw in enumerate(annotations):
        try:
            annotation = require_dict(raw)
            image_id = as_id(require(annotation, "image_id"), "image_id")
            caption = as_string(require(annotation, "caption"), "caption")
        except BadRecord as exc:
            collector.skip(f"annotation {index}", None, str(exc))
            continue
        captions.setdefault(image_id, []).append(caption)
    return captions


def read_coco_captions(
    file: str | Path,
    images_dir: str | Path | None = None,
    *,
    prompt: str = COCO_CAPTION_PROMPT,
) -> ReadResult:
    """COCO images of an official caption file (``captions_val2014.json``: ``images`` and
    ``annotations``), the file FG-TRACER reads (all 40,504 val2014 images).

    ``id`` is the image ``id``; ``image`` is ``file_name`` under ``images_dir`` (the ``val2014/``
    folder), else under the file's folder; ``question`` is ``prompt``; ``answers`` are the image's
    captions (``annotations`` joined by ``image_id``, file order). An image without a caption is
    skipped. ``extra`` keeps the other image fields (``file_name``, ``coco_url``, ``flickr_url``,
    ``width``, ``height``, ...).
    """
    data = load_json(file)
    images = list_field(data, "images", file)
    annotations = list_field(data, "annotations", file)
    collector = Collector(file)
    captions = _captions_by_image(annotations, collector)
    for index, raw in enumerate(images):
        where = f"image {index}"
        record_id: str | None = None
        try:
            record = require_dict(raw)
            record_id = as_id(require(record, "id"), "id")
            filename = _plain_name(as_string(require(record, "file_name"), "file_name"), "file_name")
            if record_id not in captions:
                raise BadRecord("no caption in 'annotations'")
            example = Example(
                id=record_id,
                image=resolve_image(filename, file, images_dir),
                question=prompt,
                answers=tuple(captions[record_id]),
                dataset="coco",
                extra=dict(record),
            )
        except BadRecord as exc:
            collector.skip(where, record_id, str(exc))
            continue
        collector.add(where, example)
    return collector.result()


def is_karpathy_file(file: str | Path) -> bool:
    """Whether a COCO caption file is Karpathy's `dataset_coco.json` (images holding their
    `sentences`) rather than an official `captions_*.json` (separate `annotations`)."""
    try:
        data = json.loads(Path(file).read_text(encoding="utf-8-sig"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as error:
        raise DatasetError(f"{file}: not a COCO caption JSON file ({error})") from None
    return isinstance(data, dict) and "annotations" not in data and isinstance(data.get("images"), list)


__all__ = ["is_karpathy_file", "read_coco_captions", "read_coco_karpathy"]
