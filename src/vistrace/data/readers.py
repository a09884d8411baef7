"""Readers for the official files of VQAv2, Visual7W (telling), DocVQA and MMHal-Bench.

Each reader returns a :class:`ReadResult`: the examples in file order and the records it skipped,
each with a one-line reason. A file that cannot be read at all, or that is another variant of the
dataset (a Visual7W pointing file, a split with no question), raises :class:`DatasetError` with one
line naming the file. Images are referenced, never opened; a relative image path is resolved
against ``images_dir`` when given, else against the data file's folder (:mod:`vistrace.images`).
"""

from __future__ import annotations

from collections import Counter
from pathlib import Path
from typing import Any

from vistrace.data._records import (
    BadRecord,
    Collector,
    as_id,
    as_string,
    as_text,
    as_text_list,
    image_reference,
    list_field,
    load_json,
    load_records,
    other_fields,
    require,
    require_dict,
)
from vistrace.data.example import DatasetError, Example, ReadResult
from vistrace.images import resolve_image

__all__ = [
    "VISUAL7W_IMAGE_FORMAT",
    "VQAV2_IMAGE_FORMAT",
    "read_docvqa",
    "read_mmhal",
    "read_visual7w",
    "read_vqav2",
]

VQAV2_IMAGE_FORMAT = "COCO_val2014_%012d.jpg"
VISUAL7W_IMAGE_FORMAT = "v7w_%d.jpg"


def _int_id(value: Any, key: str) -> int:
    """An integer id given as an integer or a string of digits."""
    if isinstance(value, bool):
        raise BadRecord(f"{key!r} must be an integer, found bool")
    if isinstance(value, int):
        return value
    if isinstance(value, str) and value.strip().isdigit():
        return int(value)
    raise BadRecord(f"{key!r} must be an integer, found {value!r}")


def read_vqav2(
    questions_file: str | Path,
    annotations_file: str | Path,
    images_dir: str | Path | None = None,
    *,
    image_name_format: str = VQAV2_IMAGE_FORMAT,
) -> ReadResult:
    """VQAv2 questions joined with their annotations by ``question_id``.

    ``image`` is ``image_name_format % image_id`` (``COCO_val2014_%012d.jpg`` by default; pass the
    train2014 or test2015 pattern for other splits) in ``images_dir``, else in the questions file's
    folder. ``answers`` are the ten
    annotators' ``answer`` strings, ``category`` is ``answer_type``; ``extra`` keeps
    ``question_id``, ``image_id``, ``question_type``, ``multiple_choice_answer``,
    ``answer_confidence`` (one per answer) and every other field of both records. Annotations
    without a question are ignored; a question without an annotation is skipped.
    """
    questions = list_field(load_json(questions_file), "questions", questions_file)
    annotations = list_field(load_json(annotations_file), "annotations", annotations_file)

    by_question: dict[str, dict[str, Any]] = {}
    ann_collector = Collector(annotations_file)
    for index, raw in enumerate(annotations):
        where = f"annotation {index}"
        try:
            record = require_dict(raw)
            by_question.setdefault(as_id(require(record, "question_id"), "question_id"), record)
        except BadRecord as exc:
            ann_collector.skip(where, None, str(exc))

    collector = Collector(questions_file)
    for index, raw in enumerate(questions):
        where = f"question {index}"
        record_id: str | None = None
        try:
            record = require_dict(raw)
            record_id = as_id(require(record, "question_id"), "question_id")
            question = as_text(require(record, "question"), "question")
            image_id = _int_id(require(record, "image_id"), "image_id")
            annotation = by_question.get(record_id)
            if annotation is None:
                raise BadRecord(f"no annotation with this question_id in {annotations_file}")
            answer_items = require(annotation, "answers")
            answers = as_text_list(answer_items, "answers")
            try:
                image_name = image_name_format % image_id
            except (TypeError, ValueError) as exc:
                raise BadRecord(f"image_name_format {image_name_format!r} failed ({exc})") from exc
            extra = {**other_fields(annotation, {"answers"}), **other_fields(record, {"question"})}
            if isinstance(answer_items, list):
                extra["answer_confidence"] = [
                    item.get("answer_confidence") if isinstance(item, dict) else None for item in answer_items
                ]
            answer_type = annotation.get("answer_type")
            example = Example(
                id=record_id,
                image=resolve_image(image_name, questions_file, images_dir),
                question=question,
                answers=answers,
                category=None if answer_type is None else str(answer_type),
                dataset="vqav2",
                extra=extra,
            )
        except BadRecord as exc:
            collector.skip(where, record_id, str(exc))
            continue
        collector.add(where, example)
    result = collector.result()
    result.skipped[:0] = ann_collector.skipped
    return result


def _is_box_id(value: Any) -> bool:
    """Whether a Visual7W answer is a box id (an integer), as in the pointing task."""
    return isinstance(value, int) and not isinstance(value, bool)


def _pointing_evidence(data: dict[str, Any], images: list[Any]) -> str | None:
    """Why a Visual7W file is the pointing variant (answers are box ids), or None for telling."""
    if "boxes" in data:
        return "it has a top-level 'boxes' list"
    for image in images:
        qa_pairs = image.get("qa_pairs") if isinstance(image, dict) else None
        for qa in qa_pairs if isinstance(qa_pairs, list) else ():
            if not isinstance(qa, dict):
                continue
            choices = qa.get("multiple_choices")
            if _is_box_id(qa.get("answer")) or (
                isinstance(choices, list) and choices and all(_is_box_id(c) for c in choices)
            ):
                return f"qa_id {qa.get('qa_id')} has answer {qa.get('answer')!r}, choices {choices!r}"
    return None


def _split_counts(images: list[Any]) -> Counter[str]:
    """QA pairs per ``split`` value of a Visual7W ``images`` list."""
    counts: Counter[str] = Counter()
    for image in images:
        if isinstance(image, dict):
            qa_pairs = image.get("qa_pairs")
            counts[str(image.get("split"))] += len(qa_pairs) if isinstance(qa_pairs, list) else 0
    return counts


def read_visual7w(
    file: str | Path,
    images_dir: str | Path | None = None,
    split: str | None = "test",
) -> ReadResult:
    """Visual7W telling QA pairs of one split (``split=None``: all splits).

    ``id`` is ``qa_id``; ``image`` is the image's ``filename`` (``v7w_<image_id>.jpg`` when absent)
    in ``images_dir``, else in the file's folder; ``answers`` is the correct answer alone;
    ``choices`` is the correct answer followed by the three ``multiple_choices`` (a QA pair without
    exactly three text choices is skipped); ``category`` is the QA ``type``. ``extra`` keeps the
    other QA fields plus the image's ``split`` and ``filename``.

    Raises :class:`DatasetError` for a pointing file (``dataset_v7w_pointing.json``: answers and
    choices are box ids, which the telling prompt would show as numbers) and when no QA pair is in
    ``split`` (the message lists the splits present with their QA counts).
    """
    data = load_json(file)
    images = list_field(data, "images", file)
    evidence = _pointing_evidence(data, images)
    if evidence is not None:
        raise DatasetError(
            f"{file}: a Visual7W pointing file ({evidence}): its answers are box ids; vistrace reads "
            "the telling task (dataset_v7w_telling.json)"
        )
    counts = _split_counts(images)
    if split is not None and counts[split] == 0:
        present = ", ".join(f"{name} ({n})" for name, n in sorted(counts.items()) if n) or "none"
        raise DatasetError(f"{file}: no QA pair in split {split!r}; splits present: {present}")
    collector = Collector(file)
    for image_index, raw_image in enumerate(images):
        try:
            image = require_dict(raw_image)
            if split is not None and image.get("split") != split:
                continue
            qa_pairs = require(image, "qa_pairs")
            if not isinstance(qa_pairs, list):
                raise BadRecord(f"'qa_pairs' must be a list, found {type(qa_pairs).__name__}")
            filename = image.get("filename")
            if not isinstance(filename, str) or not filename:
                filename = VISUAL7W_IMAGE_FORMAT % _int_id(require(image, "image_id"), "image_id")
        except BadRecord as exc:
            collector.skip(f"image {image_index}", None, str(exc))
            continue
        for qa_index, raw_qa in enumerate(qa_pairs):
            where = f"image {image_index} qa_pair {qa_index}"
            record_id: str | None = None
            try:
                qa = require_dict(raw_qa)
                record_id = as_id(require(qa, "qa_id"), "qa_id")
                answer = as_string(require(qa, "answer"), "answer")
                wrong = require(qa, "multiple_choices")
                if not isinstance(wrong, list) or len(wrong) != 3:
                    raise BadRecord("'multiple_choices' must be a list of 3 wrong answers")
                wrong_texts = tuple(as_string(choice, "multiple_choices") for choice in wrong)
                qa_type = qa.get("type")
                extra = other_fields(qa, {"question", "answer", "multiple_choices"})
                extra.update(split=image.get("split"), filename=filename)
                example = Example(
                    id=record_id,
                    image=resolve_image(filename, file, images_dir),
                    question=as_text(require(qa, "question"), "question"),
                    answers=(answer,),
                    category=None if qa_type is None else str(qa_type),
                    choices=(answer, *wrong_texts),
                    dataset="visual7w",
                    extra=extra,
                )
            except BadRecord as exc:
                collector.skip(where, record_id, str(exc))
                continue
            collector.add(where, example)
    return collector.result()


def _question_types(record: dict[str, Any]) -> tuple[str, ...]:
    """Every entry of a DocVQA record's ``question_types`` (``_withQT`` release), in file order."""
    types = record.get("question_types")
    if types is None:
        return ()
    if not isinstance(types, list) or not all(isinstance(t, str) and t.strip() for t in types):
        raise BadRecord(f"'question_types' must be a list of names, found {types!r}")
    return tuple(dict.fromkeys(types))


def read_docvqa(file: str | Path, images_dir: str | Path | None = None) -> ReadResult:
    """DocVQA questions of an official ``*_v1.0.json`` file (``data`` list).

    ``id`` is ``questionId``; ``image`` is the record's ``image`` path (``documents/...png``) under
    ``images_dir``, else under the file's folder; ``answers`` are all accepted answers;
    ``categories`` are every entry of ``question_types`` (present only in the ``_withQT`` release;
    a question of several types counts in each, as the paper's ``create_docvqa.py`` counts it),
    ``category`` the first of them, or None. ``extra`` keeps every other field,
    ``question_types`` included.
    """
    data = list_field(load_json(file), "data", file)
    collector = Collector(file)
    for index, raw in enumerate(data):
        where = f"record {index}"
        record_id: str | None = None
        try:
            record = require_dict(raw)
            record_id = as_id(require(record, "questionId"), "questionId")
            image, _ = image_reference(as_string(require(record, "image"), "image"), file, images_dir)
            example = Example(
                id=record_id,
                image=image,
                question=as_text(require(record, "question"), "question"),
                answers=as_text_list(require(record, "answers"), "answers"),
                categories=_question_types(record),
                dataset="docvqa",
                extra=other_fields(record, {"question", "answers", "image"}),
            )
        except BadRecord as exc:
            collector.skip(where, record_id, str(exc))
            continue
        collector.add(where, example)
    return collector.result()


def read_mmhal(file: str | Path, images_dir: str | Path | None = None) -> ReadResult:
    """MMHal-Bench (``response_template.json``) or any JSON list / JSONL in the Volcano input format.

    ``id`` is the record's ``id`` or ``question_id`` when present, else its position in the file
    (``"0"``, ``"1"``, ...; image ids repeat across questions). The answer is ``gt_answer``, or
    ``gold_answer`` as the Volcano README names it. ``category`` is ``question_type``.

    ``image_src`` may be a local path (relative: to ``images_dir``, else to the file's folder) or
    a URL. For a URL, ``image`` is the file with the URL's base name in that folder (where a
    download of the image is expected; nothing is fetched) and ``image_url`` keeps the URL; :func:`load_image`
    names both when that file is missing. ``extra`` keeps every other field, ``image_src`` and
    ``image_id`` included.
    """
    collector = Collector(file)
    for index, (where, raw) in enumerate(load_records(file)):
        record_id: str | None = None
        try:
            record = require_dict(raw)
            id_key = next((key for key in ("id", "question_id") if record.get(key) is not None), None)
            record_id = str(index) if id_key is None else as_id(record[id_key], id_key)
            answer_key = "gt_answer" if "gt_answer" in record else "gold_answer"
            if answer_key not in record:
                raise BadRecord("missing key 'gt_answer' (or 'gold_answer')")
            image, url = image_reference(
                as_string(require(record, "image_src"), "image_src"), file, images_dir
            )
            question_type = record.get("question_type")
            example = Example(
                id=record_id,
                image=image,
                question=as_text(require(record, "question"), "question"),
                answers=(as_text(require(record, answer_key), answer_key),),
                category=None if question_type is None else str(question_type),
                dataset="mmhal",
                extra=other_fields(record, {"question", answer_key}),
                image_url=url,
            )
        except BadRecord as exc:
            collector.skip(where, record_id, str(exc))
            continue
        collector.add(where, example)
    return collector.result()
