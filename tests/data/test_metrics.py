"""Hand-worked cases for the VQAv2, DocVQA and Visual7W metrics."""

from __future__ import annotations

import random
import re

import pytest

from vistrace.data.metrics import (
    CONTRACTIONS,
    MANUAL_MAP,
    METRICS,
    PUNCTUATION,
    anls,
    levenshtein,
    mc_accuracy,
    normalize_vqa_answer,
    vqa_accuracy,
    vqa_all_agree,
)

pytestmark = [pytest.mark.unit]

# ---------------------------------------------------------------- VQAv2: annotator agreement
#
# Leave-one-out arithmetic for ten answers of which m equal the prediction: an annotator who gave
# the prediction leaves m-1 matches among the other nine, any other annotator leaves m; each subset
# scores min(1, matches/3) and the ten are averaged.


def test_vqa_unanimous_match_is_one() -> None:
    assert vqa_accuracy("yes", ["yes"] * 10) == 1.0


def test_vqa_no_match_is_zero() -> None:
    assert vqa_accuracy("no", ["yes"] * 10) == 0.0


def test_vqa_four_of_ten_is_one() -> None:
    # 4 x min(1, 3/3) + 6 x min(1, 4/3) = 10 -> 10/10
    assert vqa_accuracy("2", ["2"] * 4 + ["3"] * 6) == 1.0


def test_vqa_three_of_ten() -> None:
    # 3 x (2/3) + 7 x 1 = 9 -> 0.9
    assert vqa_accuracy("2", ["2"] * 3 + ["3"] * 7) == pytest.approx(0.9)


def test_vqa_two_of_ten() -> None:
    # 2 x (1/3) + 8 x (2/3) = 6 -> 0.6
    assert vqa_accuracy("2", ["2"] * 2 + ["3"] * 8) == pytest.approx(0.6)


def test_vqa_one_of_ten() -> None:
    # 1 x 0 + 9 x (1/3) = 3 -> 0.3
    assert vqa_accuracy("2", ["2"] + ["3"] * 9) == pytest.approx(0.3)


def test_vqa_three_answers() -> None:
    # answers cat, cat, dog: leave out cat -> 1/3, leave out cat -> 1/3, leave out dog -> 2/3; mean 4/9
    assert vqa_accuracy("cat", ["cat", "cat", "dog"]) == pytest.approx(4 / 9)


def test_vqa_single_answer_scores_against_itself() -> None:
    assert vqa_accuracy("cat", ["cat"]) == pytest.approx(1 / 3)
    assert vqa_accuracy("dog", ["cat"]) == 0.0


def test_vqa_no_answers_raises() -> None:
    with pytest.raises(ValueError, match="at least one reference answer"):
        vqa_accuracy("cat", [])
    with pytest.raises(TypeError):
        vqa_accuracy("cat", "cat")


# ---------------------------------------------------------------- VQAv2: normalisation


def test_vqa_number_words() -> None:
    # the format example: 2 x6, two, 3, 2, 1 -> after normalisation "2" x8
    answers = ["2", "2", "2", "2", "2", "2", "two", "3", "2", "1"]
    assert vqa_accuracy("two", answers) == 1.0
    assert vqa_accuracy("2", answers) == 1.0
    assert vqa_accuracy("Three", answers) == pytest.approx(0.3)
    assert normalize_vqa_answer("none") == "0"
    assert normalize_vqa_answer("Ten") == "10"
    assert normalize_vqa_answer("eleven") == "eleven"


def test_vqa_articles() -> None:
    # coat x5 (after "a coat" -> "coat"), jacket x2, raincoat, green coat, coat and hat
    answers = [
        "coat",
        "coat",
        "coat",
        "coat",
        "jacket",
        "jacket",
        "raincoat",
        "coat",
        "green coat",
        "coat and hat",
    ]
    assert vqa_accuracy("a coat", answers) == 1.0
    assert vqa_accuracy("The jacket.", answers) == pytest.approx(0.6)
    assert normalize_vqa_answer("an apple a day") == "apple day"


def test_vqa_case_only_normalised_when_annotators_differ() -> None:
    # "Green" among other answers is lower-cased: green x7 -> full score
    answers = ["green"] * 5 + ["dark green", "green", "teal", "green and black", "Green"]
    assert vqa_accuracy("GREEN", answers) == 1.0
    assert vqa_accuracy("Dark-Green", answers) == pytest.approx(0.3)


def test_vqa_unanimous_answers_are_not_normalised() -> None:
    # official quirk: with one distinct answer neither side is normalised
    assert vqa_accuracy("Yes", ["yes"] * 10) == 0.0
    assert vqa_accuracy("yes.", ["yes"] * 10) == 0.0
    assert vqa_accuracy("two", ["2"] * 10) == 0.0
    assert vqa_accuracy("Yes", ["yes"] * 10, always_normalize=True) == 1.0
    assert vqa_accuracy("two", ["2"] * 10, always_normalize=True) == 1.0
    # one dissenting annotator switches normalisation on for everyone
    assert vqa_accuracy("Yes", ["yes"] * 9 + ["no"]) == 1.0


def test_vqa_whitespace_always_cleaned() -> None:
    assert vqa_accuracy("  yes\n", ["yes"] * 10) == 1.0
    assert vqa_accuracy("\tyes ", ["yes"] * 10) == 1.0
    # inner tab -> space, but without normalisation runs of spaces stay
    assert vqa_accuracy("dark\tgreen", ["dark green"] * 10) == 1.0
    assert vqa_accuracy("dark  green", ["dark green"] * 10) == 0.0
    assert vqa_accuracy("dark  green", ["dark green"] * 9 + ["green"]) == 1.0


def test_vqa_contractions() -> None:
    # "dont" -> "don't"; don't x3 of 10 -> 0.9
    answers = ["don't"] * 3 + ["no"] * 7
    assert vqa_accuracy("dont", answers) == pytest.approx(0.9)
    assert vqa_accuracy("Dont", ["dont"] * 3 + ["no"] * 7) == pytest.approx(0.9)
    assert normalize_vqa_answer("isnt it") == "isn't it"


def test_vqa_commas_in_numbers() -> None:
    # a digit,digit comma removes every punctuation mark instead of spacing it
    assert normalize_vqa_answer("1,000") == "1000"
    assert normalize_vqa_answer("1,000 (approx)") == "1000 approx"
    assert vqa_accuracy("1,000", ["1000"] * 3 + ["100"] * 7) == pytest.approx(0.9)
    assert vqa_accuracy("1000", ["1,000"] * 3 + ["100"] * 7) == pytest.approx(0.9)


def test_vqa_punctuation() -> None:
    assert normalize_vqa_answer("red,white") == "red white"
    assert normalize_vqa_answer("red, white") == "red white"
    assert normalize_vqa_answer("t-shirt") == "t shirt"
    assert normalize_vqa_answer("yes!") == "yes"
    assert normalize_vqa_answer("what?") == "what"
    # apostrophes and colons are not in the official list
    assert normalize_vqa_answer("don't") == "don't"
    assert normalize_vqa_answer("10:30") == "10:30"


def test_vqa_periods() -> None:
    # a period followed by a digit stays, any other goes, at most 32 per string
    assert normalize_vqa_answer("3.5") == "3.5"
    assert normalize_vqa_answer("3.") == "3"
    assert normalize_vqa_answer("etc.") == "etc"
    assert normalize_vqa_answer("x" + "." * 40) == "x" + "." * 8


def test_vqa_empty_prediction() -> None:
    assert vqa_accuracy("", ["yes"] * 9 + ["no"]) == 0.0
    assert vqa_accuracy("", ["yes"] * 10) == 0.0


def test_vqa_tables_match_official_sizes() -> None:
    assert len(CONTRACTIONS) == 120
    assert CONTRACTIONS["somebody'd"] == "somebodyd"
    assert len(MANUAL_MAP) == 12
    assert "".join(PUNCTUATION) == ';/[]"{}()=+\\_-><@`,?!'


def test_vqa_all_agree() -> None:
    assert vqa_all_agree("yes", ["yes"] * 10)
    assert not vqa_all_agree("yes", ["yes"] * 9 + ["no"])
    assert not vqa_all_agree("Yes", ["yes"] * 10)
    assert vqa_all_agree("Yes", ["yes"] * 10, always_normalize=True)
    # normalised because the strings differ, then all ten equal "2"
    assert vqa_all_agree("two", ["2"] * 9 + ["two"])
    with pytest.raises(ValueError):
        vqa_all_agree("yes", [])


# Independent port of the official loop (GT-Vision-Lab/VQA vqaEval.py, VQAEval.evaluate), with
# answer dicts compared by inequality as there, to cross-check the leave-one-out bookkeeping.
def _official_accuracy(prediction: str, answers: list[str]) -> float:
    period_strip = re.compile(r"(?!<=\d)(\.)(?!\d)")
    comma_strip = re.compile(r"(\d)(\,)(\d)")

    def process_punctuation(in_text: str) -> str:
        out_text = in_text
        for p in PUNCTUATION:
            if (p + " " in in_text or " " + p in in_text) or (re.search(comma_strip, in_text) is not None):
                out_text = out_text.replace(p, "")
            else:
                out_text = out_text.replace(p, " ")
        return period_strip.sub("", out_text, count=re.UNICODE)

    def process_digit_article(in_text: str) -> str:
        manual = dict(MANUAL_MAP)
        out = []
        for word in in_text.lower().split():
            word = manual.setdefault(word, word)
            if word not in ("a", "an", "the"):
                out.append(word)
        for i, word in enumerate(out):
            if word in CONTRACTIONS:
                out[i] = CONTRACTIONS[word]
        return " ".join(out)

    gts = [{"answer": a, "answer_id": i + 1} for i, a in enumerate(answers)]
    for ans in gts:
        ans["answer"] = str(ans["answer"]).replace("\n", " ").replace("\t", " ").strip()
    res = prediction.replace("\n", " ").replace("\t", " ").strip()
    if len({ans["answer"] for ans in gts}) > 1:
        for ans in gts:
            ans["answer"] = process_digit_article(process_punctuation(str(ans["answer"])))
        res = process_digit_article(process_punctuation(res))
    acc = []
    for datum in gts:
        others = [item for item in gts if item != datum]
        matching = [item for item in others if item["answer"] == res]
        acc.append(min(1, float(len(matching)) / 3))
    return float(sum(acc)) / len(acc)


def test_vqa_matches_official_loop_on_random_cases() -> None:
    rng = random.Random(0)
    pool = [
        "2",
        "two",
        "Two.",
        "yes",
        "Yes",
        "no",
        "a dog",
        "dog",
        "the dog!",
        "1,000",
        "1000",
        "dont",
        "don't",
    ]
    pool += ["red, white", "red white", " yes\t", "3.5", "t-shirt", "t shirt", ""]
    for _ in range(2000):
        answers = [rng.choice(pool) for _ in range(rng.choice([2, 3, 10, 10, 10]))]
        prediction = rng.choice(pool)
        assert vqa_accuracy(prediction, answers) == _official_accuracy(prediction, answers)


# ---------------------------------------------------------------- DocVQA ANLS


def test_levenshtein() -> None:
    assert levenshtein("kitten", "sitting") == 3
    assert levenshtein("sitting", "kitten") == 3
    assert levenshtein("", "abc") == 3
    assert levenshtein("abc", "") == 3
    assert levenshtein("", "") == 0
    assert levenshtein("flaw", "lawn") == 2


def test_anls_case_and_whitespace() -> None:
    assert anls("inv-2041", ["INV-2041", "INV 2041"]) == 1.0
    assert anls("  Dana   Whitfield ", ["Dana Whitfield"]) == 1.0


def test_anls_partial_match() -> None:
    # "inv2041" vs "inv-2041": distance 1, max length 8 -> 1 - 1/8
    assert anls("INV2041", ["INV-2041"]) == pytest.approx(0.875)
    assert anls("INV2041", ["INV-2041"], threshold=0.9) == 0.0


def test_anls_best_answer_wins() -> None:
    # "$4,210" -> distance 1 of 6; "4,210" -> exact
    assert anls("4,210", ["$4,210", "4,210"]) == 1.0
    assert anls("4210", ["$4,210", "4,210"]) == pytest.approx(1 - 1 / 5)


def test_anls_threshold_boundary() -> None:
    # "ab" vs "abcd": distance 2, length 4 -> NL = 0.5 exactly; the script keeps 1 - 0.5 = 0.5
    # because it zeroes only scores < threshold
    assert anls("ab", ["abcd"]) == 0.5
    # "ab" vs "abcde": NL = 3/5 = 0.6 -> 0.4 < 0.5 -> 0
    assert anls("ab", ["abcde"]) == 0.0
    # "abc" vs "abcde": NL = 2/5 -> 0.6
    assert anls("abc", ["abcde"]) == pytest.approx(0.6)


def test_anls_denominator_uses_raw_lengths() -> None:
    # normalised "dana whitfeld" vs "dana whitfield": distance 1; the script divides by the raw
    # prediction's length (15 with its two leading spaces), not by 14
    assert anls("  Dana Whitfeld", ["Dana Whitfield"]) == pytest.approx(1 - 1 / 15)


def test_anls_empty_strings() -> None:
    assert anls("", ["Quarterly Output"]) == 0.0
    assert anls("", [""]) == 1.0
    assert anls("anything", [""]) == 0.0
    with pytest.raises(ValueError, match="at least one reference answer"):
        anls("x", [])


# Port of the official per-question computation (DocVQA/InfographicVQA script, evaluate_method),
# with its own edit distance, to cross-check the normalisation and the raw-length denominator.
def _official_anls(prediction: str, answers: list[str], threshold: float = 0.5) -> float:
    def levenshtein_distance(s1: str, s2: str) -> int:
        if len(s1) > len(s2):
            s1, s2 = s2, s1
        distances = list(range(len(s1) + 1))
        for i2, c2 in enumerate(s2):
            distances_ = [i2 + 1]
            for i1, c1 in enumerate(s1):
                if c1 == c2:
                    distances_.append(distances[i1])
                else:
                    distances_.append(1 + min((distances[i1], distances[i1 + 1], distances_[-1])))
            distances = distances_
        return distances[-1]

    values = []
    for answer in answers:
        gt_answer = " ".join(answer.strip().lower().split())
        det_answer = " ".join(prediction.strip().lower().split())
        dist = levenshtein_distance(gt_answer, det_answer)
        length = max(len(answer.upper()), len(prediction.upper()))
        values.append(0.0 if length == 0 else float(dist) / float(length))
    question_result = 1 - min(values)
    return 0 if question_result < threshold else question_result


def test_anls_matches_official_script_on_random_cases() -> None:
    rng = random.Random(1)
    alphabet = "abAB 12-$,\t"
    for _ in range(3000):
        prediction = "".join(rng.choice(alphabet) for _ in range(rng.randint(0, 8)))
        answers = [
            "".join(rng.choice(alphabet) for _ in range(rng.randint(0, 8))) for _ in range(rng.randint(1, 3))
        ]
        assert anls(prediction, answers) == _official_anls(prediction, answers)


# ---------------------------------------------------------------- Visual7W


def test_mc_official_rule() -> None:
    assert mc_accuracy("A red kite.", "A red kite.", rule="official") == 1.0
    assert mc_accuracy(" a RED kite. \n", "A red kite.", rule="official") == 1.0
    assert mc_accuracy("A red kite", "A red kite.", rule="official") == 0.0
    assert mc_accuracy("A blue umbrella.", "A red kite.", rule="official") == 0.0


def test_mc_paper_rule() -> None:
    assert mc_accuracy("A red kite", "A red kite.") == 1.0
    assert mc_accuracy("a red-kite!", "A red kite.", rule="paper") == 1.0
    # spaces are dropped too: "ared kite" and "a red kite" both become "aredkite"
    assert mc_accuracy("ared kite", "A red kite.") == 1.0
    assert mc_accuracy("A red kite, probably.", "A red kite.") == 0.0
    assert mc_accuracy("", "A red kite.") == 0.0


def test_mc_unknown_rule() -> None:
    with pytest.raises(ValueError, match="unknown Visual7W rule"):
        mc_accuracy("a", "a", rule="fuzzy")  # type: ignore[arg-type]


def test_metrics_registry() -> None:
    assert METRICS["vqa_accuracy"]("yes", ["yes"] * 10) == 1.0
    assert METRICS["anls"]("ab", ["abcd"]) == 0.5
    assert METRICS["mc_accuracy"]("A", "a.") == 1.0
