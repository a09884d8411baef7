"""TextVQA, ChartQA and COCO readers on the format examples and on bad records; TextVQA accuracy,
ChartQA relaxed accuracy and FG-TRACER's correct-set tests, with property tests."""

from __future__ import annotations

import json
import math
import re
import shutil
from pathlib import Path
from typing import Any

import pytest
from hypothesis import assume, given
from hypothesis import strategies as st

from vistrace.data import DatasetError, Example, docvqa_prompt
from vistrace.data.metrics import ARTICLES, CONTRACTIONS, MANUAL_MAP, PUNCTUATION, vqa_accuracy
from vistrace.data.metrics_text_rich import (
    extract_final_answer,
    fgtracer_chartqa_kept,
    fgtracer_textvqa_kept,
    normalize_textvqa_answer,
    relaxed_accuracy,
    relaxed_correctness,
    textvqa_accuracy,
)
from vistrace.data.prompts import chartqa_prompt, example_prompt, textvqa_llava_prompt, textvqa_prompt
from vistrace.data.readers_coco import read_coco_captions, read_coco_karpathy
from vistrace.data.readers_text_rich import (
    COCO_CAPTION_PROMPT,
    FGTRACER_TEXTVQA_CLASSES,
    read_chartqa,
    read_textvqa,
)

pytestmark = [pytest.mark.unit]

FORMATS = Path(__file__).resolve().parent / "formats"
TEXTVQA = FORMATS / "textvqa_val_example.json"
TEXTVQA_OCR = FORMATS / "textvqa_rosetta_ocr_val_example.json"
CHART_HUMAN = FORMATS / "chartqa_test_human_example.json"
CHART_AUG = FORMATS / "chartqa_test_augmented_example.json"
KARPATHY = FORMATS / "coco_karpathy_example.json"
CAPTIONS = FORMATS / "coco_captions_val2014_example.json"


def _write(path: Path, data: Any) -> Path:
    path.write_text(json.dumps(data), encoding="utf-8")
    return path


def _textvqa_record(**changes: Any) -> dict[str, Any]:
    record = json.loads(TEXTVQA.read_text(encoding="utf-8"))["data"][0]
    record.update(changes)
    return {key: value for key, value in record.items() if value is not None}


# ---------------------------------------------------------------- TextVQA reader


def test_textvqa_format_example() -> None:
    result = read_textvqa(TEXTVQA)
    assert result.skipped == []
    assert [e.id for e in result.examples] == ["990001", "990002", "990003"]
    first = result.examples[0]
    assert first.image == FORMATS.resolve() / "train_images" / "0a1b2c3d4e5f6071.jpg"
    assert first.question == "what brand is printed on the bottle?"
    assert first.answers == ("kestrel",) * 4 + ("kestrel lager",) + ("kestrel",) * 5
    assert first.dataset == "textvqa"
    assert first.category is None and first.categories == ()
    assert first.extra["image_id"] == "0a1b2c3d4e5f6071"
    assert first.extra["image_classes"] == ["Bottle", "Drink", "Beer"]
    assert first.extra["question_id"] == 990001
    assert "ocr_tokens" not in first.extra  # the 0.5.1 question file has none
    assert "answers" not in first.extra and "question" not in first.extra


def test_textvqa_images_dir_and_ocr_join(tmp_path: Path) -> None:
    result = read_textvqa(TEXTVQA, tmp_path, ocr_file=TEXTVQA_OCR)
    assert result.skipped == []
    first, _, third = result.examples
    assert first.image == tmp_path.resolve() / "0a1b2c3d4e5f6071.jpg"
    assert first.extra["ocr_tokens"] == ["KESTREL", "LAGER", "1905"]
    assert third.extra["ocr_tokens"] == ["O'BRIEN", "7"]
    assert Example.from_dict(first.to_dict()) == first  # extra survives the round trip


def test_textvqa_fgtracer_categories() -> None:
    result = read_textvqa(TEXTVQA, category_classes=FGTRACER_TEXTVQA_CLASSES)
    assert [e.categories for e in result.examples] == [
        ("Bottle", "Drink"),
        ("Bottle", "Drink"),
        ("Person", "Sports uniform", "Man"),
    ]
    assert result.examples[2].category == "Person"


def test_textvqa_own_ocr_tokens_win_and_missing_ocr_image_is_skipped(tmp_path: Path) -> None:
    own = _textvqa_record(question_id=1, ocr_tokens=["A", "B"])
    stranger = _textvqa_record(question_id=2, image_id="ffffffffffffffff")
    file = _write(tmp_path / "TextVQA_0.5.1_val.json", {"data": [own, stranger]})
    result = read_textvqa(file, ocr_file=TEXTVQA_OCR)
    assert [e.id for e in result.examples] == ["1"]
    assert result.examples[0].extra["ocr_tokens"] == ["A", "B"]
    (reason,) = [s.reason for s in result.skipped]
    assert "record 1 (id 2)" in reason and "'ffffffffffffffff' has no entry" in reason
    assert str(TEXTVQA_OCR) in reason


def test_textvqa_test_split_without_answers(tmp_path: Path) -> None:
    record = _textvqa_record(answers=None, set_name="test", question_id=7)
    file = _write(tmp_path / "TextVQA_0.5.1_test.json", {"dataset_type": "test", "data": [record]})
    (example,) = read_textvqa(file).examples
    assert example.answers == ()
    hf = _write(tmp_path / "hf_test.json", {"data": [{**record, "answers": [""] * 10}]})
    assert read_textvqa(hf).examples[0].answers == ()
    assert example.image == tmp_path.resolve() / "test_images" / "0a1b2c3d4e5f6071.jpg"


@pytest.mark.parametrize(
    ("changes", "problem"),
    [
        ({"answers": None}, "missing key 'answers'"),
        ({"answers": "kestrel"}, "'answers' must be a list"),
        ({"answers": ["kestrel", 5]}, "'answers' must hold strings"),
        ({"answers": [""] * 10}, "empty 'answers'"),
        ({"image_id": "../etc/passwd"}, "'image_id' must be a plain file name"),
        ({"image_id": 12}, "'image_id' must be a string"),
        ({"question": None}, "missing key 'question'"),
        ({"ocr_tokens": "KESTREL"}, "'ocr_tokens' must be a list"),
        ({"question_id": True}, "'question_id' must be a string or an integer"),
    ],
)
def test_textvqa_bad_record_skipped_with_one_reason(
    tmp_path: Path, changes: dict[str, Any], problem: str
) -> None:
    good = _textvqa_record(question_id=1)
    bad = _textvqa_record(**{"question_id": 2, **changes})
    file = _write(tmp_path / "TextVQA_0.5.1_val.json", {"data": [good, bad]})
    result = read_textvqa(file)
    assert [e.id for e in result.examples] == ["1"]
    (skip,) = result.skipped
    assert problem in skip.reason and "\n" not in skip.reason
    assert skip.reason.startswith(f"{file}: record 1")


def test_textvqa_duplicate_question_id_keeps_first(tmp_path: Path) -> None:
    record = _textvqa_record(question_id=5)
    file = _write(tmp_path / "t.json", {"data": [record, {**record, "question": "other?"}]})
    result = read_textvqa(file)
    assert [e.question for e in result.examples] == [record["question"]]
    assert "duplicate id, also at record 0" in result.skipped[0].reason


def test_textvqa_not_a_question_file(tmp_path: Path) -> None:
    with pytest.raises(DatasetError, match="expected a JSON object with key 'data'"):
        read_textvqa(_write(tmp_path / "t.json", [_textvqa_record()]))


# ---------------------------------------------------------------- ChartQA reader


def test_chartqa_single_file_layout() -> None:
    result = read_chartqa(CHART_HUMAN)
    assert result.skipped == []
    assert [e.id for e in result.examples] == [
        "chartqa_test_human_example:0",
        "chartqa_test_human_example:1",
        "chartqa_test_human_example:2",
    ]
    first = result.examples[0]
    assert first.image == FORMATS.resolve() / "png" / "99000001.png"
    assert first.question == "How many bars are shown in the chart?"
    assert first.answers == ("4",)
    assert first.dataset == "chartqa"
    assert first.extra == {"imgname": "99000001.png", "source": "chartqa_test_human_example"}


def test_chartqa_release_folder_reads_human_then_augmented(tmp_path: Path) -> None:
    split = tmp_path / "test"
    split.mkdir()
    shutil.copy(CHART_AUG, split / "test_augmented.json")
    shutil.copy(CHART_HUMAN, split / "test_human.json")
    result = read_chartqa(split)
    assert result.skipped == []
    assert [e.id for e in result.examples][:4] == [
        "test_human:0",
        "test_human:1",
        "test_human:2",
        "test_augmented:0",
    ]
    assert [e.category for e in result.examples] == ["human"] * 3 + ["augmented"] * 3
    assert result.examples[3].image == split.resolve() / "png" / "two_col_990001.png"
    assert result.examples[5].answers == ("0",)
    images = tmp_path / "charts"
    assert read_chartqa(split, images).examples[0].image == images.resolve() / "99000001.png"


def test_chartqa_bad_records(tmp_path: Path) -> None:
    records = [
        {"imgname": "a.png", "query": "q?", "label": "1"},
        {"imgname": "a.png", "query": "q?"},
        {"imgname": "png/a.png", "query": "q?", "label": "1"},
        {"imgname": "a.png", "query": "q?", "label": ["1"]},
        "not an object",
    ]
    file = _write(tmp_path / "test_human.json", records)
    result = read_chartqa(file)
    assert [e.id for e in result.examples] == ["test_human:0"]
    assert [s.id for s in result.skipped] == ["test_human:1", "test_human:2", "test_human:3", "test_human:4"]
    reasons = [s.reason for s in result.skipped]
    assert "missing key 'label'" in reasons[0]
    assert "plain file name" in reasons[1]
    assert "'label' must be a string" in reasons[2]
    assert "expected an object" in reasons[3]


def test_chartqa_empty_folder(tmp_path: Path) -> None:
    with pytest.raises(DatasetError, match=r"no \*_human.json or \*_augmented.json"):
        read_chartqa(tmp_path)


# ---------------------------------------------------------------- COCO readers


def test_coco_karpathy_test_split() -> None:
    result = read_coco_karpathy(KARPATHY)
    assert result.skipped == []
    (example,) = result.examples
    assert example.id == "990001"
    assert example.image == FORMATS.resolve() / "val2014" / "COCO_val2014_000000990001.jpg"
    assert example.question == COCO_CAPTION_PROMPT
    assert example.answers[0] == "A dog catching a red frisbee in a park. "  # raw, unchanged
    assert len(example.answers) == 5
    assert example.dataset == "coco" and example.category is None
    assert example.extra["split"] == "test" and example.extra["imgid"] == 0
    assert "sentences" not in example.extra


def test_coco_karpathy_split_choice(tmp_path: Path) -> None:
    assert [e.id for e in read_coco_karpathy(KARPATHY, split=None).examples] == [
        "990001",
        "990002",
        "990003",
        "990004",
    ]
    train = read_coco_karpathy(KARPATHY, tmp_path, split=("train", "restval"))
    assert [e.id for e in train.examples] == ["990003", "990004"]
    assert train.examples[1].image == tmp_path.resolve() / "train2014" / "COCO_train2014_000000990004.jpg"
    assert len(train.examples[0].answers) == 6
    with pytest.raises(DatasetError, match=r"no image in split 'testing'; splits present: restval \(1\)"):
        read_coco_karpathy(KARPATHY, split="testing")


def test_coco_karpathy_refuses_flickr(tmp_path: Path) -> None:
    data = json.loads(KARPATHY.read_text(encoding="utf-8"))
    data["dataset"] = "flickr30k"
    with pytest.raises(DatasetError, match="dataset 'flickr30k', not 'coco'"):
        read_coco_karpathy(_write(tmp_path / "dataset_flickr30k.json", data))


def test_coco_karpathy_bad_images(tmp_path: Path) -> None:
    data = json.loads(KARPATHY.read_text(encoding="utf-8"))
    images = data["images"]
    del images[1]["cocoid"]
    images[2]["sentences"] = []
    images[3]["filename"] = "../x.jpg"
    result = read_coco_karpathy(_write(tmp_path / "dataset_coco.json", data), split=None)
    assert [e.id for e in result.examples] == ["990001"]
    reasons = [s.reason for s in result.skipped]
    assert "image 1: missing key 'cocoid'" in reasons[0]
    assert "image 2 (id 990003): 'sentences' must be a non-empty list" in reasons[1]
    assert "image 3 (id 990004): 'filename' must be a plain file name" in reasons[2]


def test_coco_official_captions(tmp_path: Path) -> None:
    result = read_coco_captions(CAPTIONS, tmp_path)
    assert result.skipped == []
    first, second = result.examples
    assert (first.id, second.id) == ("990001", "990002")
    assert first.answers == (
        "A dog catching a red frisbee in a park. ",
        "A brown dog leaps to catch a frisbee.",
    )
    assert first.image == tmp_path.resolve() / "COCO_val2014_000000990001.jpg"
    assert first.extra["coco_url"] == "http://mscoco.org/images/990001"


def test_coco_official_captions_without_caption(tmp_path: Path) -> None:
    data = json.loads(CAPTIONS.read_text(encoding="utf-8"))
    data["annotations"] = [a for a in data["annotations"] if a["image_id"] == 990001] + [{"image_id": 990002}]
    result = read_coco_captions(_write(tmp_path / "captions.json", data))
    assert [e.id for e in result.examples] == ["990001"]
    reasons = [s.reason for s in result.skipped]
    assert "annotation 2: missing key 'caption'" in reasons[0]
    assert "image 1 (id 990002): no caption in 'annotations'" in reasons[1]


# ---------------------------------------------------------------- prompts


def test_prompts() -> None:
    assert textvqa_prompt("what year?") == docvqa_prompt("what year?")
    assert textvqa_llava_prompt("What year?", ["KESTREL", "1905"]) == (
        "What year?\nReference OCR token: KESTREL, 1905\nAnswer the question using a single word or phrase."
    )
    cot = chartqa_prompt("How many bars?")
    assert cot.endswith("'FINAL ANSWER:'. The question is: How many bars? Let's think step by step.")
    assert chartqa_prompt("Q?", mllama=True).endswith(
        "The question is: Q?<cot_start>Let's think step by step."
    )
    (coco,) = read_coco_karpathy(KARPATHY).examples
    assert example_prompt(coco) == (COCO_CAPTION_PROMPT, None)


# ---------------------------------------------------------------- TextVQA accuracy


class _M4CProcessor:
    """facebookresearch/mmf ``EvalAIAnswerProcessor`` (mmf/utils/m4c_evaluators.py), kept as an
    oracle; its tables are the VQA ones vistrace already holds."""

    PERIOD_STRIP = re.compile(r"(?!<=\d)(\.)(?!\d)")
    COMMA_STRIP = re.compile(r"(?<=\d)(\,)+(?=\d)")

    def __call__(self, item: str) -> str:
        item = item.lower().replace(",", "").replace("?", "").replace("'s", " 's").strip()
        item = item.replace("\n", " ").replace("\t", " ").strip()
        out = item
        for p in PUNCTUATION:
            if (p + " " in item or " " + p in item) or (re.search(self.COMMA_STRIP, item) is not None):
                out = out.replace(p, "")
            else:
                out = out.replace(p, " ")
        out = self.PERIOD_STRIP.sub("", out, re.UNICODE)
        words = [dict(MANUAL_MAP).setdefault(w, w) for w in out.lower().split()]
        words = [w for w in words if w not in ARTICLES]
        return " ".join(CONTRACTIONS.get(w, w) for w in words)


def _m4c_accuracy(prediction: str, raw_answers: list[str]) -> float:
    """MMF ``TextVQAAccuracyEvaluator`` for one question (``_compute_answer_scores`` + lookup)."""
    processor = _M4CProcessor()
    answers = [processor(a) for a in raw_answers]
    gt_answers = list(enumerate(answers))
    scores = {}
    for unique in set(answers):
        accs = []
        for gt in gt_answers:
            others = [item for item in gt_answers if item != gt]
            accs.append(min(1, float(len([item for item in others if item[1] == unique])) / 3))
        scores[unique] = sum(accs) / len(accs)
    return scores.get(processor(prediction), 0.0)


def test_textvqa_accuracy_examples() -> None:
    answers = ["1,905"] * 3 + ["1905"] * 6 + ["unanswerable"]
    assert textvqa_accuracy("1905", answers) == pytest.approx(1.0)
    assert textvqa_accuracy("unanswerable", answers) == pytest.approx(0.3)
    # VQAv2 leaves identical answers unprocessed; TextVQA always processes them.
    assert vqa_accuracy("Coca-Cola", ["coca-cola"] * 10) == 0.0
    assert textvqa_accuracy("Coca-Cola", ["coca-cola"] * 10) == 1.0
    assert normalize_textvqa_answer("O'Brien's?") == "o'brien 's"
    assert normalize_textvqa_answer("The 2 Dogs, Inc.") == "2 dogs inc"
    with pytest.raises(ValueError, match="at least one"):
        textvqa_accuracy("x", [])
    with pytest.raises(TypeError):
        textvqa_accuracy("x", "x")


_ANSWER_TEXT = st.text(alphabet=st.sampled_from(list("ab2 .,?'s-!:Tthe")), max_size=8)


@given(_ANSWER_TEXT, st.lists(_ANSWER_TEXT, min_size=10, max_size=10))
def test_textvqa_accuracy_matches_the_official_evaluator(prediction: str, answers: list[str]) -> None:
    assert textvqa_accuracy(prediction, answers) == pytest.approx(_m4c_accuracy(prediction, answers))


_PLAIN_TEXT = st.text(alphabet=st.sampled_from(list("abAB2 .-!:/the")), max_size=8)


@given(_PLAIN_TEXT, st.lists(_PLAIN_TEXT, min_size=1, max_size=10))
def test_textvqa_accuracy_is_always_normalized_vqa_without_commas(
    prediction: str, answers: list[str]
) -> None:
    expected = vqa_accuracy(prediction, answers, always_normalize=True)
    assert textvqa_accuracy(prediction, answers) == pytest.approx(expected)
    assert 0.0 <= textvqa_accuracy(prediction, answers) <= 1.0


# ---------------------------------------------------------------- ChartQA relaxed accuracy


@pytest.mark.parametrize(
    ("target", "prediction", "correct"),
    [
        ("12", "12.5", True),  # 4.2 % off
        ("12", "12.7", False),  # 5.8 % off
        ("12", "11.4", True),  # exactly 5 %
        ("0.5", "50%", True),
        ("50%", "0.5", True),
        ("Yes", "yes", True),
        ("Yes", "yes ", False),  # no strip
        ("0", "0", True),
        ("0", "0.0", False),  # a 0 target is compared as text
        ("1000", "1,000", False),
        ("nan", "nan", False),
        ("Rep/Lean Rep", "rep/lean rep", True),
        ("2.333333333", "2.33", True),
    ],
)
def test_relaxed_correctness_examples(target: str, prediction: str, correct: bool) -> None:
    assert relaxed_correctness(target, prediction) is correct


def test_relaxed_accuracy_takes_the_best_answer() -> None:
    assert relaxed_accuracy("7", ["Seven", "7.2"]) == 1.0
    assert relaxed_accuracy("8", ["Seven", "7.2"]) == 0.0
    with pytest.raises(ValueError):
        relaxed_accuracy("8", [])
    with pytest.raises(TypeError):
        relaxed_accuracy("8", "8")


_NUMBERS = st.floats(min_value=1e-6, max_value=1e9, allow_nan=False) | st.floats(
    min_value=-1e9, max_value=-1e-6, allow_nan=False
)


@given(_NUMBERS, st.floats(min_value=-0.049, max_value=0.049))
def test_relaxed_within_five_percent(target: float, change: float) -> None:
    assert relaxed_correctness(repr(target), repr(target * (1 + change)))
    assert relaxed_correctness(f"{target * 100!r}%", repr(target * (1 + change)))


@given(_NUMBERS, st.floats(min_value=0.051, max_value=100.0), st.booleans())
def test_relaxed_beyond_five_percent(target: float, change: float, down: bool) -> None:
    factor = 1 - change if down else 1 + change
    assume(factor != 0)
    assert not relaxed_correctness(repr(target), repr(target * factor))


@given(st.text(alphabet=st.sampled_from(list("abcXYZ -/'")), min_size=1, max_size=10))
def test_relaxed_text_is_case_insensitive_exact_match(text: str) -> None:
    assume(text.strip().lower() not in ("nan", "inf", "infinity"))
    assert relaxed_correctness(text, text.upper())
    assert relaxed_correctness(text.lower(), text)
    assert not relaxed_correctness(text, text + "x")


@given(st.floats(allow_nan=False, allow_infinity=False) | st.text(max_size=6))
def test_relaxed_identity_except_nan_and_infinity(value: float | str) -> None:
    text = value if isinstance(value, str) else repr(value)
    try:
        number = float(text.rstrip("%")) if text.endswith("%") else float(text)
    except ValueError:
        number = None
    expected = number is None or math.isfinite(number)
    assert relaxed_correctness(text, text) is expected


@given(st.text(max_size=6), st.lists(st.text(max_size=6), min_size=1, max_size=4))
def test_relaxed_accuracy_is_the_max_over_answers(prediction: str, answers: list[str]) -> None:
    score = relaxed_accuracy(prediction, answers)
    assert score in (0.0, 1.0)
    assert score == max(float(relaxed_correctness(a, prediction)) for a in answers)


# ---------------------------------------------------------------- FG-TRACER's tests


def test_extract_final_answer() -> None:
    assert extract_final_answer("Step 1 ...\nFINAL ANSWER: 14") == "14"
    assert extract_final_answer("**FINAL ANSWER:** Italy.") == "Italy."
    assert extract_final_answer("reasoning\n\nThe answer is 3") == "The answer is 3"
    assert extract_final_answer("Answer: 2 ... Answer: 5") == "5"


@pytest.mark.parametrize(
    ("prediction", "label", "kept"),
    [
        ("so the total is 1,250.\nFINAL ANSWER: 1,250", "1250", True),
        ("FINAL ANSWER: 0.57", "0.57", True),
        ("FINAL ANSWER: 0.6", "0.57", False),  # 5.3 % off
        ("FINAL ANSWER: -3", "-3", False),  # the integer regex drops the sign
        ("FINAL ANSWER: none", "0", False),
        ("FINAL ANSWER: 0", "0", True),
        ("FINAL ANSWER: Italy.", "Italy", True),
        ("FINAL ANSWER: the green line", "green line", True),  # the label is contained
        ("FINAL ANSWER: Yes", "[Yes, No]", True),
    ],
)
def test_fgtracer_chartqa_kept(prediction: str, label: str, kept: bool) -> None:
    assert fgtracer_chartqa_kept(prediction, label) is kept


def test_fgtracer_textvqa_kept() -> None:
    answers = ["kestrel"] * 9 + ["kestrel lager"]
    assert fgtracer_textvqa_kept("It says Kestrel Lager.", answers)  # substring
    assert not fgtracer_textvqa_kept("heineken", answers)
    assert fgtracer_textvqa_kept("anything", ["the"] + ["x"] * 9)  # "the" processes to ""
    assert fgtracer_textvqa_kept("Two", ["2"] * 10)
