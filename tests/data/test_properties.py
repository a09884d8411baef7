"""Property-based tests (hypothesis) of the answer normalisation and the generic record reader."""

from __future__ import annotations

import json
import string
from pathlib import Path

import pytest
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from vistrace.data.generic import read_json_records
from vistrace.data.metrics import exact_match, normalize_answer, normalize_vqa_answer, vqa_accuracy

pytestmark = [pytest.mark.unit]

MAPPING = {"id": "id", "image": "image", "question": "question", "answers": "answers"}
letters = st.characters(categories=("Lu", "Ll", "Lo", "Nd"))
words = st.text(letters, min_size=1, max_size=8)
punctuation = st.text(st.sampled_from(list(string.punctuation + " \t。！？、")), max_size=4)


@given(st.text(max_size=30))
def test_an_answer_matches_itself(text: str) -> None:
    assert exact_match(text, text) == 1.0


@given(st.text(max_size=20), st.text(max_size=20))
def test_exact_match_is_symmetric(left: str, right: str) -> None:
    assert exact_match(left, right) == exact_match(right, left)


@given(words, words)
def test_answers_with_different_letters_never_match(left: str, right: str) -> None:
    assume(normalize_answer(left) != normalize_answer(right))
    assert exact_match(left, right) == 0.0


@given(words, punctuation, punctuation)
def test_case_and_punctuation_do_not_change_an_answer(word: str, before: str, after: str) -> None:
    assert normalize_answer(before + word.upper() + after) == normalize_answer(word.upper())
    assert normalize_answer(before + word + after) == normalize_answer(word)


@given(st.text(max_size=20))
def test_answer_normalisation_is_idempotent(text: str) -> None:
    assert normalize_answer(normalize_answer(text)) == normalize_answer(text)


@given(st.text(max_size=12), st.lists(st.text(max_size=12), min_size=10, max_size=10))
def test_vqa_accuracy_is_a_fraction_of_three_agreeing_annotators(prediction: str, answers: list[str]) -> None:
    accuracy = vqa_accuracy(prediction, answers)
    assert 0.0 <= accuracy <= 1.0
    # The official score averages min(1, matches / 3) over the ten leave-one-out subsets.
    assert round(accuracy * 30) == pytest.approx(accuracy * 30, abs=1e-9)


@given(st.text(st.characters(categories=("Ll", "Nd", "Zs")), min_size=1, max_size=12))
def test_vqa_accuracy_is_one_when_every_annotator_gave_the_prediction(prediction: str) -> None:
    assume(normalize_vqa_answer(prediction))
    assert vqa_accuracy(prediction, [prediction] * 10) == 1.0


good_record = st.fixed_dictionaries(
    {
        "id": st.text(string.ascii_letters + string.digits, min_size=1, max_size=6),
        "image": st.text(string.ascii_lowercase, min_size=1, max_size=6).map(lambda name: f"{name}.png"),
        "question": st.text(min_size=1, max_size=20).filter(lambda q: q.strip() != ""),
        "answers": st.lists(
            st.text(min_size=1, max_size=8).filter(lambda a: a.strip() != ""), min_size=1, max_size=3
        ),
    }
)
bad_record = st.one_of(
    good_record.map(lambda r: {**r, "question": ["a", "list"]}),
    good_record.map(lambda r: {**r, "answers": []}),
    good_record.map(lambda r: {**r, "answers": [None]}),
    good_record.map(lambda r: {k: v for k, v in r.items() if k != "image"}),
    st.just("a string, not a record"),
)


@settings(max_examples=60, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.lists(st.tuples(st.booleans(), good_record, bad_record), max_size=8))
def test_the_reader_keeps_every_good_record_in_order_and_names_every_bad_one(
    tmp_path: Path, rows: list[tuple[bool, dict[str, object], object]]
) -> None:
    records: list[object] = []
    expected: list[dict[str, object]] = []
    for index, (good, record, bad) in enumerate(rows):
        unique = {**record, "id": f"{index}-{record['id']}"}
        records.append(unique if good else bad)
        if good:
            expected.append(unique)
    file = tmp_path / "data.jsonl"
    file.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records), encoding="utf-8")
    read = read_json_records(file, MAPPING)
    assert [e.id for e in read.examples] == [r["id"] for r in expected]
    assert [e.question for e in read.examples] == [r["question"] for r in expected]
    assert [list(e.answers) for e in read.examples] == [r["answers"] for r in expected]
    assert len(read.examples) + len(read.skipped) == len(records)
    for skipped in read.skipped:
        assert str(file) in skipped.reason and "\n" not in skipped.reason


def test_line_separators_inside_a_jsonl_string_do_not_split_the_record(tmp_path: Path) -> None:
    file = tmp_path / "data.jsonl"
    record = {"id": "1", "image": "a.png", "question": "left\u2028right\x85end?", "answers": ["x\u2029y"]}
    file.write_text(json.dumps(record, ensure_ascii=False) + "\n", encoding="utf-8")
    read = read_json_records(file, MAPPING)
    assert not read.skipped
    assert [(e.question, e.answers) for e in read.examples] == [(record["question"], ("x\u2029y",))]
