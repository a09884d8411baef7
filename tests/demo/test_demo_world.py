"""Tests of the synthetic shapes world, its dataset writers and the Volcano training turns."""

from __future__ import annotations

import json
import re
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from vistrace.demo.volcano_data import (
    DECISION_PROMPT,
    FEEDBACK_PROMPT,
    REVISION_PROMPT,
    STAGES,
    decision_letter,
    is_correct,
    volcano_training_set,
    volcano_turns,
    volcano_vocabulary,
)
from vistrace.demo.world import (
    COLOURS,
    KINDS,
    PLURALS,
    POSITIONS,
    QUESTION_KINDS,
    Sample,
    Scene,
    Shape,
    answer_space,
    corpus,
    make_split,
    render,
    tokenize,
    vocabulary,
)
from vistrace.demo.writers import question_ids, write_volcano_input, write_vqav2

pytestmark = [pytest.mark.unit]


@pytest.fixture(scope="module")
def samples() -> list[Sample]:
    return make_split(60, seed=7, questions_per_scene=3)


def _scenes(samples: list[Sample]) -> list[Scene]:
    return list({sample.scene.id: sample.scene for sample in samples}.values())


def _overlap(a: tuple[int, int, int, int], b: tuple[int, int, int, int]) -> bool:
    return a[0] < b[2] and b[0] < a[2] and a[1] < b[3] and b[1] < a[3]


def test_same_seed_gives_same_samples_and_image_bytes() -> None:
    first, second = make_split(12, seed=3), make_split(12, seed=3)
    assert first == second
    for a, b in zip(first, second, strict=True):
        assert render(a.scene).tobytes() == render(b.scene).tobytes()
    assert make_split(12, seed=4) != first


def test_scene_depends_only_on_seed_and_index() -> None:
    short, long = make_split(3, seed=5), make_split(8, seed=5)
    assert [s.scene for s in short] == [s.scene for s in long[: len(short)]]


@pytest.mark.parametrize("size", [64, (80, 48), (33, 61)])
def test_boxes_inside_image_one_per_cell_and_disjoint(size: int | tuple[int, int]) -> None:
    for scene in _scenes(make_split(40, seed=11, image_size=size)):
        expected = (size, size) if isinstance(size, int) else size
        assert (scene.width, scene.height) == expected
        assert 1 <= len(scene.shapes) <= 3
        for shape in scene.shapes:
            left, top, right, bottom = shape.box
            assert 0 <= left < right <= scene.width and 0 <= top < bottom <= scene.height
            cell_x = scene.width // 2 if left >= scene.width // 2 else 0
            cell_y = scene.height // 2 if top >= scene.height // 2 else 0
            assert right <= (scene.width if cell_x else scene.width // 2)
            assert bottom <= (scene.height if cell_y else scene.height // 2)
            assert left >= cell_x and top >= cell_y
        positions = [scene.position_of(shape) for shape in scene.shapes]
        assert len(set(positions)) == len(positions)
        for i, a in enumerate(scene.shapes):
            for b in scene.shapes[i + 1 :]:
                assert not _overlap(a.box, b.box)


def test_render_draws_only_inside_boxes_in_the_shape_colours() -> None:
    for kind in KINDS:
        shape = Shape(kind, "blue", (10, 12, 31, 33))
        scene = Scene(1, 64, 48, (230, 230, 230), (shape,))
        pixels = np.asarray(render(scene))
        assert pixels.shape == (48, 64, 3)
        painted = np.any(pixels != (230, 230, 230), axis=-1)
        ys, xs = np.nonzero(painted)
        assert xs.min() >= 10 and xs.max() <= 30 and ys.min() >= 12 and ys.max() <= 32
        assert tuple(pixels[22, 20]) == COLOURS["blue"]


def test_noise_is_light_and_deterministic() -> None:
    scene = Scene(1, 32, 32, (220, 220, 220), (), noise_seed=9)
    pixels = np.asarray(render(scene)).astype(int)
    assert 0 < np.abs(pixels - 220).max() <= 6
    assert render(scene).tobytes() == render(scene).tobytes()


def _check_answer(sample: Sample) -> None:
    """Recompute the answer and evidence of a question from the scene alone."""
    scene, qa = sample.scene, sample.qa
    q = qa.question
    if m := re.fullmatch(r"What color is the (\w+)\?", q):
        matches = [s for s in scene.shapes if s.kind == m[1]]
        assert len(matches) == 1
        assert (qa.answer, qa.target_boxes) == (matches[0].colour, (matches[0].box,))
    elif m := re.fullmatch(r"What shape is the (\w+) object\?", q):
        matches = [s for s in scene.shapes if s.colour == m[1]]
        assert len(matches) == 1
        assert (qa.answer, qa.target_boxes) == (matches[0].kind, (matches[0].box,))
    elif m := re.fullmatch(r"Where is the (?:(\w+) )?(\w+)\?", q):
        colour, noun = m[1], m[2]
        matches = [
            s
            for s in scene.shapes
            if (colour is None or s.colour == colour) and (noun == "object" or s.kind == noun)
        ]
        assert len(matches) == 1
        assert qa.answer == scene.position_of(matches[0]) and qa.target_boxes == (matches[0].box,)
    elif m := re.fullmatch(r"How many (?:(\w+) )?(\w+) are there\?", q):
        colour, noun = m[1], m[2]
        kind = None if noun == "shapes" else next(k for k, p in PLURALS.items() if p == noun)
        matches = [
            s for s in scene.shapes if (colour is None or s.colour == colour) and (kind in (None, s.kind))
        ]
        assert qa.answer == str(len(matches))
        assert qa.target_boxes == tuple(s.box for s in matches)
    elif m := re.fullmatch(r"Is there a (\w+) (\w+)\?", q):
        matches = [s for s in scene.shapes if (s.colour, s.kind) == (m[1], m[2])]
        assert qa.answer == ("yes" if matches else "no")
        assert qa.target_boxes == tuple(s.box for s in matches)
    else:
        raise AssertionError(f"unexpected question {q!r}")


def test_answers_and_boxes_follow_from_the_scene(samples: list[Sample]) -> None:
    for sample in samples:
        _check_answer(sample)
        assert sample.qa.answer in answer_space(sample.qa.question_kind)
        expected_type = {"count": "number", "existence": "yes/no"}.get(sample.qa.question_kind, "other")
        assert sample.qa.answer_type == expected_type
        assert sample.qa.fact.endswith(".")


def test_question_kinds_balanced_and_distinct_per_scene(samples: list[Sample]) -> None:
    counts = Counter(sample.qa.question_kind for sample in samples)
    assert set(counts) == set(QUESTION_KINDS)
    assert max(counts.values()) - min(counts.values()) <= 1
    per_scene = Counter(sample.scene.id for sample in samples)
    assert set(per_scene.values()) == {3}
    for scene_id in per_scene:
        kinds = [s.qa.question_kind for s in samples if s.scene.id == scene_id]
        assert len(set(kinds)) == len(kinds)
    yes_no = Counter(s.qa.answer for s in make_split(200, seed=1) if s.qa.question_kind == "existence")
    assert min(yes_no.values()) > 0.3 * sum(yes_no.values())


def test_vocabulary_covers_every_generated_word(samples: list[Sample]) -> None:
    words = set(vocabulary())
    assert words == set(tokenize(" ".join(corpus())))
    assert words >= set(COLOURS) | set(KINDS) | set(PLURALS.values()) | {"yes", "no", "?", "."}
    assert all(set(tokenize(position)) <= words for position in POSITIONS)
    for sample in samples:
        for text in (sample.qa.question, sample.qa.answer, sample.qa.fact):
            assert set(tokenize(text)) <= words, text
    extended = set(volcano_vocabulary())
    for turn in volcano_training_set(samples, seed=0, contrast_decision=True):
        assert set(tokenize(turn.prompt)) | set(tokenize(turn.target)) <= extended
        if turn.stage != "decision":
            assert set(tokenize(turn.target)) <= words


def test_vqav2_files_follow_the_official_structure(samples: list[Sample], tmp_path: Path) -> None:
    written = write_vqav2(samples, tmp_path, split_name="val2014")
    questions = json.loads(written.questions.read_text())
    annotations = json.loads(written.annotations.read_text())
    assert set(questions) == {"info", "task_type", "data_type", "license", "data_subtype", "questions"}
    assert set(annotations) == {"info", "license", "data_subtype", "annotations", "data_type"}
    assert questions["data_subtype"] == annotations["data_subtype"] == "val2014"
    assert len(questions["questions"]) == len(annotations["annotations"]) == len(samples)
    for question, annotation, sample in zip(
        questions["questions"], annotations["annotations"], samples, strict=True
    ):
        assert set(question) == {"image_id", "question", "question_id"}
        assert set(annotation) == {
            "question_id",
            "image_id",
            "question_type",
            "answer_type",
            "multiple_choice_answer",
            "answers",
        }
        assert question["question_id"] == annotation["question_id"] == sample.question_id
        assert annotation["multiple_choice_answer"] == sample.qa.answer
        assert annotation["answer_type"] in {"yes/no", "number", "other"}
        assert sample.qa.question.lower().startswith(annotation["question_type"])
        assert [a["answer_id"] for a in annotation["answers"]] == list(range(1, 11))
        assert all(a["answer"] == sample.qa.answer for a in annotation["answers"])
        assert all(set(a) == {"answer", "answer_confidence", "answer_id"} for a in annotation["answers"])
        image = tmp_path / "images" / f"COCO_val2014_{question['image_id']:012d}.jpg"
        assert image.exists()
    assert len(written.images) == len(_scenes(samples))
    with Image.open(written.images[0]) as opened:
        assert opened.format == "JPEG" and opened.mode == "RGB" and opened.size == (64, 64)
    boxes = json.loads(written.boxes.read_text())
    assert set(boxes) == {str(sample.question_id) for sample in samples}
    first = boxes[str(samples[0].question_id)]
    assert first["boxes"] == [list(box) for box in samples[0].qa.target_boxes]
    assert (first["image_width"], first["image_height"]) == (64, 64)


def test_jpeg_keeps_shape_colours(samples: list[Sample], tmp_path: Path) -> None:
    written = write_vqav2(samples[:1], tmp_path)
    shape = samples[0].scene.shapes[0]
    left, top, right, bottom = shape.box
    with Image.open(written.images[0]) as image:
        centre = np.asarray(image.convert("RGB"))[(top + bottom) // 2, (left + right) // 2].astype(int)
    if shape.kind in ("circle", "square", "cross"):
        assert np.abs(centre - COLOURS[shape.colour]).max() <= 12


def test_question_ids_are_filled_in_and_checked() -> None:
    scene = make_split(1, seed=0)[0].scene
    qa = make_split(1, seed=0)[0].qa
    assert question_ids([Sample(scene, qa), Sample(scene, qa)]) == [scene.id * 1000, scene.id * 1000 + 1]
    with pytest.raises(ValueError, match="duplicate"):
        question_ids([Sample(scene, qa, 5), Sample(scene, qa, 5)])


def test_volcano_input_records(samples: list[Sample], tmp_path: Path) -> None:
    written = write_volcano_input(samples, tmp_path)
    records = json.loads(written.input_json.read_text())
    assert isinstance(records, list) and len(records) == len(samples)
    for record, sample in zip(records, samples, strict=True):
        assert {"image_id", "image_src", "question", "gold_answer", "question_type", "target_boxes"} <= set(
            record
        )
        assert (written.input_json.parent / record["image_src"]).is_file()
        assert not Path(record["image_src"]).is_absolute()
        assert record["gold_answer"] == sample.qa.answer
        assert record["target_boxes"] == [list(box) for box in sample.qa.target_boxes]


def test_volcano_prompts_are_byte_exact() -> None:
    assert FEEDBACK_PROMPT == (
        "Generate the feedback given initial answer referring to question and image."
        "\nQuestion: {question}\nInitial answer: {outputs}"
    )
    assert REVISION_PROMPT == (
        "Adjust the initial response considering the feedback and image."
        "\nQuestion: {question}\nInitial answer: {outputs}\nFeedback: {feedback}"
    )
    assert DECISION_PROMPT == (
        "{question}\nA. {outputs}\nB. {revision}"
        "\nAnswer with the option's letter from the given choices directly."
    )


@pytest.mark.parametrize("p_wrong", [0.0, 1.0])
def test_volcano_turns_feedback_revision_and_decision(samples: list[Sample], p_wrong: float) -> None:
    rng = np.random.default_rng(0)
    for sample in samples:
        qa = sample.qa
        turns = volcano_turns(sample, rng, p_wrong=p_wrong)
        assert [turn.stage for turn in turns] == list(STAGES)
        answer, feedback, revision, decision = turns
        assert (answer.prompt, answer.target) == (qa.question, qa.answer)
        initial = feedback.prompt.rsplit("\nInitial answer: ", 1)[1]
        assert feedback.prompt == FEEDBACK_PROMPT.format(question=qa.question, outputs=initial)
        assert is_correct(qa, initial) == (p_wrong == 0.0)
        verdict = "The answer is correct." if p_wrong == 0.0 else "The answer is wrong."
        assert feedback.target == f"{verdict} {qa.fact}"
        assert revision.prompt == REVISION_PROMPT.format(
            question=qa.question, outputs=initial, feedback=feedback.target
        )
        assert revision.target == qa.answer
        assert decision.prompt == DECISION_PROMPT.format(
            question=qa.question, outputs=initial, revision=revision.target
        )
        assert decision.target == ("A" if p_wrong == 0.0 else "B")


def test_decision_letters_and_contrast_turns(samples: list[Sample]) -> None:
    qa = samples[0].qa
    wrong = next(a for a in answer_space(qa.question_kind) if a != qa.answer)
    assert decision_letter(qa, wrong, qa.answer) == "B"
    assert decision_letter(qa, qa.answer, qa.answer) == "A"
    assert decision_letter(qa, qa.answer, wrong) == "A"
    assert decision_letter(qa, wrong, wrong) == "A"
    turns = volcano_training_set(samples, seed=2, p_wrong=0.5, contrast_decision=True)
    assert turns == volcano_training_set(samples, seed=2, p_wrong=0.5, contrast_decision=True)
    decisions = [turn for turn in turns if turn.stage == "decision"]
    assert len(decisions) == 2 * len(samples)
    assert {turn.target for turn in decisions[0::2]} == {"A", "B"}
    assert {turn.target for turn in decisions[1::2]} == {"A"}
