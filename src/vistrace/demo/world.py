"""A synthetic world of coloured shapes where every answer and its visual evidence are known.

The scenes and their pixels are `vistrace.demo.scenes` (its names are importable from here too);
this module asks unambiguous questions about them, with their answers, facts and evidence boxes, and
draws balanced splits of (scene, question) samples.

Every function takes its randomness from an explicit ``numpy.random.Generator`` or seed; nothing
reads or changes global random state.
"""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from vistrace.demo.scenes import (
    COLOURS,
    KINDS,
    MAX_SHAPES,
    MIN_IMAGE_SIDE,
    NOISE_AMPLITUDE,
    POSITIONS,
    RGB,
    Box,
    Scene,
    Shape,
    generate_scene,
    render,
)

PLURALS: dict[str, str] = {
    "circle": "circles",
    "square": "squares",
    "triangle": "triangles",
    "cross": "crosses",
}
COUNT_ANSWERS: tuple[str, ...] = tuple(str(n) for n in range(MAX_SHAPES + 1))
QUESTION_KINDS: tuple[str, ...] = ("colour", "shape", "count", "position", "existence")
ANSWER_TYPES: dict[str, str] = {
    "colour": "other",
    "shape": "other",
    "count": "number",
    "position": "other",
    "existence": "yes/no",
}
VQA_QUESTION_TYPES: dict[str, str] = {
    "colour": "what color is the",
    "shape": "what shape is the",
    "count": "how many",
    "position": "where is the",
    "existence": "is there a",
}
_ANSWER_SPACES: dict[str, tuple[str, ...]] = {
    "colour": tuple(COLOURS),
    "shape": KINDS,
    "count": COUNT_ANSWERS,
    "position": POSITIONS,
    "existence": ("yes", "no"),
}
FEEDBACK_CORRECT = "The answer is correct."
FEEDBACK_WRONG = "The answer is wrong."


@dataclass(frozen=True)
class QA:
    """A question about a scene with its answer and evidence.

    ``answer_type`` is the VQAv2 type (``yes/no``, ``number``, ``other``); ``question_kind`` is one of
    `QUESTION_KINDS`; ``target_boxes`` are the boxes of the shapes the answer rests on (the shape
    asked about, the shapes counted, the shapes found; empty when there is none); ``fact`` is a
    sentence stating the answer (``"The circle is red."``).
    """

    question: str
    answer: str
    answer_type: str
    question_kind: str
    target_boxes: tuple[Box, ...]
    fact: str = ""


@dataclass(frozen=True)
class Sample:
    """A scene and one question about it; ``question_id`` is unique within a split when set."""

    scene: Scene
    qa: QA
    question_id: int | None = None


def tokenize(text: str) -> list[str]:
    """Lower-case word tokens of ``text``; every punctuation mark is a token of its own."""
    return re.findall(r"[a-z0-9']+|[^\sa-z0-9']", text.lower())


def answer_space(question_kind: str) -> tuple[str, ...]:
    """Every answer a question of ``question_kind`` can have."""
    return _ANSWER_SPACES[question_kind]


def _there_are(count: int, singular: str, plural: str) -> str:
    return f"There is 1 {singular}." if count == 1 else f"There are {count} {plural}."


def _colour_text(kind: str, colour: str) -> tuple[str, str, str]:
    return f"What color is the {kind}?", colour, f"The {kind} is {colour}."


def _shape_text(kind: str, colour: str) -> tuple[str, str, str]:
    return f"What shape is the {colour} object?", kind, f"The {colour} object is a {kind}."


def _position_text(reference: str, position: str) -> tuple[str, str, str]:
    return f"Where is the {reference}?", position, f"The {reference} is at the {position}."


def _count_text(colour: str | None, kind: str | None, count: int) -> tuple[str, str, str]:
    if colour is not None:
        singular, plural = f"{colour} shape", f"{colour} shapes"
    elif kind is not None:
        singular, plural = kind, PLURALS[kind]
    else:
        singular, plural = "shape", "shapes"
    return f"How many {plural} are there?", str(count), _there_are(count, singular, plural)


def _existence_text(kind: str, colour: str, present: bool) -> tuple[str, str, str]:
    fact = f"There is a {colour} {kind}." if present else f"There is no {colour} {kind}."
    return f"Is there a {colour} {kind}?", "yes" if present else "no", fact


def corpus() -> list[str]:
    """Every question, answer, fact and feedback sentence the world can produce (sorted, unique)."""
    texts: set[str] = {FEEDBACK_CORRECT, FEEDBACK_WRONG}
    for kind in KINDS:
        for colour in COLOURS:
            texts.update(_colour_text(kind, colour))
            texts.update(_shape_text(kind, colour))
            for present in (True, False):
                texts.update(_existence_text(kind, colour, present))
            for position in POSITIONS:
                for reference in (kind, f"{colour} {kind}", f"{colour} object"):
                    texts.update(_position_text(reference, position))
    for count in range(MAX_SHAPES + 1):
        texts.update(_count_text(None, None, count))
        for colour in COLOURS:
            texts.update(_count_text(colour, None, count))
        for kind in KINDS:
            texts.update(_count_text(None, kind, count))
    return sorted(texts)


def vocabulary() -> list[str]:
    """Every token (by `tokenize`) that can appear in questions, answers, facts and feedback."""
    return sorted({token for text in corpus() for token in tokenize(text)})


def _pick(rng: np.random.Generator, items: list[Shape]) -> Shape:
    return items[int(rng.integers(len(items)))]


def _make_qa(kind: str, text: tuple[str, str, str], boxes: list[Box]) -> QA:
    question, answer, fact = text
    return QA(question, answer, ANSWER_TYPES[kind], kind, tuple(boxes), fact)


def _ask_colour(scene: Scene, rng: np.random.Generator) -> QA | None:
    counts = Counter(shape.kind for shape in scene.shapes)
    candidates = [shape for shape in scene.shapes if counts[shape.kind] == 1]
    if not candidates:
        return None
    shape = _pick(rng, candidates)
    return _make_qa("colour", _colour_text(shape.kind, shape.colour), [shape.box])


def _ask_shape(scene: Scene, rng: np.random.Generator) -> QA | None:
    counts = Counter(shape.colour for shape in scene.shapes)
    candidates = [shape for shape in scene.shapes if counts[shape.colour] == 1]
    if not candidates:
        return None
    shape = _pick(rng, candidates)
    return _make_qa("shape", _shape_text(shape.kind, shape.colour), [shape.box])


def _references(scene: Scene, shape: Shape) -> list[str]:
    """The phrases that pick out ``shape`` and no other shape of ``scene``."""
    kinds = Counter(other.kind for other in scene.shapes)
    colours = Counter(other.colour for other in scene.shapes)
    pairs = Counter((other.colour, other.kind) for other in scene.shapes)
    references = []
    if kinds[shape.kind] == 1:
        references.append(shape.kind)
    if pairs[(shape.colour, shape.kind)] == 1:
        references.append(f"{shape.colour} {shape.kind}")
    if colours[shape.colour] == 1:
        references.append(f"{shape.colour} object")
    return references


def _ask_position(scene: Scene, rng: np.random.Generator) -> QA | None:
    candidates = [shape for shape in scene.shapes if _references(scene, shape)]
    if not candidates:
        return None
    shape = _pick(rng, candidates)
    references = _references(scene, shape)
    reference = references[int(rng.integers(len(references)))]
    return _make_qa("position", _position_text(reference, scene.position_of(shape)), [shape.box])


def _ask_count(scene: Scene, rng: np.random.Generator) -> QA:
    variant = int(rng.integers(3))
    colour = list(COLOURS)[int(rng.integers(len(COLOURS)))] if variant == 1 else None
    kind = KINDS[int(rng.integers(len(KINDS)))] if variant == 2 else None
    counted = [
        shape
        for shape in scene.shapes
        if (colour is None or shape.colour == colour) and (kind is None or shape.kind == kind)
    ]
    return _make_qa("count", _count_text(colour, kind, len(counted)), [shape.box for shape in counted])


def _ask_existence(scene: Scene, rng: np.random.Generator) -> QA:
    present = {(shape.colour, shape.kind) for shape in scene.shapes}
    if rng.random() < 0.5:
        colour, kind = sorted(present)[int(rng.integers(len(present)))]
        found = [shape.box for shape in scene.shapes if (shape.colour, shape.kind) == (colour, kind)]
        return _make_qa("existence", _existence_text(kind, colour, True), found)
    absent = [(colour, kind) for colour in COLOURS for kind in KINDS if (colour, kind) not in present]
    near_misses = [pair for pair in absent if any(pair[0] == c or pair[1] == k for c, k in present)]
    pool = near_misses if near_misses and rng.random() < 0.5 else absent
    colour, kind = pool[int(rng.integers(len(pool)))]
    return _make_qa("existence", _existence_text(kind, colour, False), [])


_ASKERS: dict[str, Callable[[Scene, np.random.Generator], QA | None]] = {
    "colour": _ask_colour,
    "shape": _ask_shape,
    "count": _ask_count,
    "position": _ask_position,
    "existence": _ask_existence,
}


def ask(scene: Scene, question_kind: str, rng: np.random.Generator) -> QA | None:
    """A random unambiguous question of ``question_kind`` about ``scene``, or None if none exists."""
    if question_kind not in _ASKERS:
        raise ValueError(f"unknown question kind {question_kind!r}; known: {', '.join(QUESTION_KINDS)}")
    return _ASKERS[question_kind](scene, rng)


def make_split(
    n_scenes: int,
    seed: int,
    questions_per_scene: int = 3,
    image_size: int | tuple[int, int] = 64,
    start_id: int = 1,
) -> list[Sample]:
    """``n_scenes`` scenes with ``questions_per_scene`` questions of distinct kinds each.

    ``image_size`` is a side in pixels or ``(width, height)``. Scene ids run from ``start_id``;
    question ids are ``scene_id * 1000 + k``. Question kinds are balanced over the split: each
    scene gets the kinds asked least so far (ties broken at random), so kind counts differ by at
    most one. Scene ``i`` depends only on ``(seed, i)``; ``seed`` must be non-negative.
    """
    if not 1 <= questions_per_scene <= len(QUESTION_KINDS):
        raise ValueError(
            f"questions_per_scene must be in 1..{len(QUESTION_KINDS)}, got {questions_per_scene}"
        )
    width, height = (image_size, image_size) if isinstance(image_size, int) else image_size
    usage = dict.fromkeys(QUESTION_KINDS, 0)
    samples: list[Sample] = []
    for index in range(n_scenes):
        rng = np.random.default_rng([seed, index])
        scene = generate_scene(rng, start_id + index, width, height)
        tie_breaks = rng.permutation(len(QUESTION_KINDS))
        order = np.lexsort((tie_breaks, np.array([usage[kind] for kind in QUESTION_KINDS])))
        asked = 0
        for kind in (QUESTION_KINDS[int(i)] for i in order):
            qa = ask(scene, kind, rng)
            if qa is None:
                continue
            samples.append(Sample(scene, qa, scene.id * 1000 + asked))
            usage[kind] += 1
            asked += 1
            if asked == questions_per_scene:
                break
    return samples


__all__ = [
    "ANSWER_TYPES",
    "COLOURS",
    "COUNT_ANSWERS",
    "FEEDBACK_CORRECT",
    "FEEDBACK_WRONG",
    "KINDS",
    "MAX_SHAPES",
    "MIN_IMAGE_SIDE",
    "NOISE_AMPLITUDE",
    "PLURALS",
    "POSITIONS",
    "QA",
    "QUESTION_KINDS",
    "RGB",
    "VQA_QUESTION_TYPES",
    "Box",
    "Sample",
    "Scene",
    "Shape",
    "answer_space",
    "ask",
    "corpus",
    "generate_scene",
    "make_split",
    "render",
    "tokenize",
    "vocabulary",
]
