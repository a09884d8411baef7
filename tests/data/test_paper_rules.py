"""`build --rule paper` keeps what the FlowTracker code keeps; `all_agree` keeps the official metric's rule.

Expected values come from running the paper's `eval/eval_vqa.py` `preprocess_text`, `eval_docvqa.py`
`NLS` and the sampling of `create_vqa.py` / `create_visual7w.py` on the same inputs.
"""

from __future__ import annotations

import json
import random
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

from vistrace.cli import app
from vistrace.data.metrics import anls, vqa_all_agree
from vistrace.data.paper_rules import (
    paper_docvqa_kept,
    paper_nls,
    paper_visual7w_kept,
    paper_vqa_kept,
    paper_vqa_preprocess,
)
from vistrace.runs.evaluate import read_jsonl
from vistrace.runs.scoring import build_analysis_set, is_correct, score_run

pytestmark = [pytest.mark.unit]

PREPROCESSED = [
    ("Yes", "yes"),
    ("No.", "no"),
    ("Two", "2"),
    ("twenty-one", "21"),
    ("one two", "3"),
    ("two hundred", "2 100"),
    ("I'm", "i am"),
    ("dont", "do not"),
    ("1,000", "1,000"),
    ("3.5", "3 5"),
    ("3.", "3"),
    ("a dog", "dog"),
    ("The Dog's bone", "dog's bone"),
    ("shell", "she will"),
    ("U.S.A.", "yous"),
    ("t-shirt", "t shirt"),
    ("jan. 5", "january 5"),
    ("(yes)", "yes"),
    ("left/right", "left right"),
    ("4:30", "4:30"),
    ("seventy seven seventy", "560"),
    ("thousand two", "thousand two"),  # the paper's script raises IndexError here
]


@pytest.mark.parametrize(("text", "expected"), PREPROCESSED)
def test_vqa_preprocess_matches_the_paper_code(text: str, expected: str) -> None:
    assert paper_vqa_preprocess(text) == expected


def test_vqa_rule_lower_cases_where_the_official_metric_does_not() -> None:
    assert paper_vqa_kept("Yes", ["yes"] * 10)
    assert not vqa_all_agree("Yes", ["yes"] * 10)
    assert paper_vqa_kept("No", ["no"] * 10)
    assert paper_vqa_kept("two", ["2"] * 10) and not vqa_all_agree("two", ["2"] * 10)
    assert not paper_vqa_kept("yes", ["yes"] * 9 + ["no"])
    assert not paper_vqa_kept("1,000", ["1000"] * 10)
    with pytest.raises(ValueError, match="list of reference answers"):
        paper_vqa_kept("yes", "yes")


def test_docvqa_rule_is_an_exact_match_after_lower() -> None:
    answers = ["INV-2041", "INV 2041"]
    assert paper_docvqa_kept("inv-2041", answers)
    assert not paper_docvqa_kept(
        "INV2041", answers
    )  # NLS 0.875: eval_docvqa keeps it, create_docvqa drops it
    assert anls("INV2041", answers) == pytest.approx(0.875)
    assert paper_nls("ab", "abcd") == 0.0 and anls("ab", ["abcd"]) == 0.5  # '> 0.5' vs the script's '< 0.5'
    assert paper_nls("", "") == 1.0 and paper_docvqa_kept("", [""])


def test_visual7w_rule() -> None:
    assert paper_visual7w_kept("a red-kite!", "A red kite.")
    assert not paper_visual7w_kept("A red kite, probably.", "A red kite.")


def _record(key: int, dataset: str, prediction: str, answers: list[str], category: Any) -> dict[str, Any]:
    return {
        "id": str(key),
        "dataset": dataset,
        "image": f"/data/{key}.jpg",
        "question": f"q{key}?",
        "prompt": f"q{key}?",
        "options": None,
        "prediction": prediction,
        "generated_ids": [10, 11],
        "answers": answers,
        "category": category[0] if isinstance(category, list) else category,
        "categories": category if isinstance(category, list) else [category],
    }


def _write_run(run: Path, records: list[dict[str, Any]]) -> Path:
    run.mkdir(parents=True, exist_ok=True)
    (run / "predictions.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records), encoding="utf-8")
    return run


def test_build_rules_on_the_cli(tmp_path: Path) -> None:
    run = _write_run(
        tmp_path / "run",
        [
            _record(1, "vqav2", "Yes", ["yes"] * 10, "yes/no"),
            _record(2, "vqav2", "No", ["no"] * 10, "yes/no"),
            _record(3, "vqav2", "two", ["2"] * 10, "number"),
            _record(4, "vqav2", "red", ["red"] * 9 + ["blue"], "other"),
        ],
    )
    runner = CliRunner()
    help_text = " ".join(runner.invoke(app, ["build", "--help"], terminal_width=200).output.split())
    for rule in ("paper:", "all_agree:", "score>X, score>=X:"):
        assert rule in help_text
    kept = {}
    for rule in ("paper", "all_agree"):
        out = tmp_path / f"{rule}.jsonl"
        result = runner.invoke(app, ["build", str(run), "--out", str(out), "--rule", rule])
        assert result.exit_code == 0, result.output
        kept[rule] = [r["id"] for r in read_jsonl(out)]
    assert kept == {"paper": ["1", "2", "3"], "all_agree": []}
    summary = json.loads((tmp_path / "paper.summary.json").read_text())
    assert {c["category"]: c["kept"] for c in summary["categories"]} == {"number": 1, "other": 0, "yes/no": 2}


def _paper_sample(records: list[dict[str, Any]], order: list[str], n: int, seed: int) -> set[str]:
    """create_vqa.py / create_visual7w.py: random.seed once, then random.sample per category in order."""
    random.seed(seed)
    chosen: set[str] = set()
    for category in order:
        ids = [r["id"] for r in records if r["category"] == category]
        picked = random.sample(ids, n)
        picked.sort()
        chosen.update(picked)
    return chosen


@pytest.mark.parametrize(
    ("dataset", "order"),
    [
        ("vqav2", ["other", "yes/no", "number"]),
        ("visual7w", ["what", "where", "how", "who", "when", "why"]),
    ],
)
def test_paper_sampling_draws_as_the_create_scripts(tmp_path: Path, dataset: str, order: list[str]) -> None:
    shuffled = list(range(1, 121))
    random.Random(5).shuffle(shuffled)
    names = sorted(order)
    records = [
        _record(key, dataset, "red", ["red"] * (10 if dataset == "vqav2" else 1), names[key % len(names)])
        for key in shuffled
    ]
    run = _write_run(tmp_path / dataset, records)
    summary = build_analysis_set(run, tmp_path / "set.jsonl", per_category=4, seed=42)
    kept = {r["id"] for r in read_jsonl(tmp_path / "set.jsonl")}
    assert kept == _paper_sample(records, order, 4, 42)
    assert all(c.kept == 4 for c in summary.categories)
    fresh = build_analysis_set(run, tmp_path / "score.jsonl", per_category=4, seed=42, correct_rule="score>0")
    assert fresh.overall.kept == 4 * len(order)
    assert {r["id"] for r in read_jsonl(tmp_path / "score.jsonl")} != kept


def test_paper_rule_refusals_and_docvqa_categories(tmp_path: Path) -> None:
    doc = _write_run(
        tmp_path / "doc",
        [
            _record(1, "docvqa", "Dana Whitfield", ["Dana Whitfield"], ["handwritten", "layout"]),
            _record(2, "docvqa", "Dana Whitfeld", ["Dana Whitfield"], ["layout"]),
        ],
    )
    summary = build_analysis_set(doc, tmp_path / "doc.jsonl")
    assert {c.category: (c.correct, c.total) for c in summary.categories} == {
        "handwritten": (1, 1),
        "layout": (1, 2),
    }
    assert (summary.overall.correct, summary.overall.total, summary.overall.kept) == (1, 2, 1)
    scores = score_run(doc)
    assert {c.category: c.count for c in scores.categories} == {"handwritten": 1, "layout": 2}
    assert scores.overall.count == 2
    assert build_analysis_set(doc, tmp_path / "anls.jsonl", correct_rule="score>0").overall.kept == 2
    with pytest.raises(ValueError, match=r"create_docvqa\.py draws no sample"):
        build_analysis_set(doc, tmp_path / "x.jsonl", per_category=1)
    with pytest.raises(ValueError, match="unknown VQA rule 'loose'"):
        build_analysis_set(doc, tmp_path / "z.jsonl", vqa_rule="loose")  # type: ignore[arg-type]
    generic = _write_run(tmp_path / "generic", [_record(1, "jsonl", "a", ["a"], None)])
    with pytest.raises(
        ValueError, match="rule 'paper' is the FlowTracker / FG-TRACER code's test for vqav2, visual7w"
    ):
        build_analysis_set(generic, tmp_path / "y.jsonl")
    assert is_correct(_record(1, "jsonl", "a", ["a"], None), "score>0")
