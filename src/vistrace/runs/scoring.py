"""Score an evaluation run and build the correct-answer set that the knockout trace reads.

:func:`score_run` reads ``<run>/predictions.jsonl`` (written by :func:`vistrace.runs.evaluate.evaluate`)
and writes ``scores.json`` and ``scores.csv``; :func:`build_analysis_set` writes the trace input
JSONL and its ``.summary.json``. Definitions are in ``docs/datasets.md`` and ``docs/metrics.md``.
"""

from __future__ import annotations

import csv
import json
import logging
import random
import re
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Literal

from vistrace.data.metrics import anls, exact_match, mc_accuracy, vqa_accuracy, vqa_all_agree
from vistrace.data.paper_rules import PAPER_DATASETS, paper_docvqa_kept, paper_visual7w_kept, paper_vqa_kept
from vistrace.runs.evaluate import PREDICTIONS_FILE, SKIPPED_FILE
from vistrace.runs.folder import (
    check_writable_target,
    iter_jsonl,
    read_config,
    read_jsonl,
    write_atomic,
    write_json,
)

__all__ = [
    "PAPER_CATEGORY_ORDER",
    "BuildSummary",
    "CategoryCount",
    "CategoryScore",
    "ScoreTable",
    "build_analysis_set",
    "is_correct",
    "metric_name",
    "record_categories",
    "score_record",
    "score_run",
    "summary_path",
]

logger = logging.getLogger(__name__)

VqaRule = Literal["official", "always_normalize"]
McRule = Literal["paper", "official"]
NO_CATEGORY = "(none)"
_SCORE_RULE = re.compile(r"^score\s*(>=|>)\s*([0-9]*\.?[0-9]+)$")
_DROPPED_KEYS = ("generated_ids", "prediction")
PAPER_CATEGORY_ORDER: dict[str, tuple[str, ...]] = {
    "vqav2": ("other", "yes/no", "number"),
    "visual7w": ("what", "where", "how", "who", "when", "why"),
}
"""The order in which the paper's ``create_vqa.py`` / ``create_visual7w.py`` draw their per-category
samples from one generator seeded once (VQAv2 answer types as the annotations spell them)."""


def metric_name(dataset: str) -> str:
    """The metric of a dataset: ``vqa_accuracy``, ``anls``, ``mc_accuracy``, else ``exact_match``."""
    return {"vqav2": "vqa_accuracy", "docvqa": "anls", "visual7w": "mc_accuracy"}.get(dataset, "exact_match")


def score_record(
    record: Mapping[str, Any],
    *,
    vqa_rule: VqaRule = "official",
    mc_rule: McRule = "paper",
    anls_threshold: float = 0.5,
) -> float | None:
    """The score in [0, 1] of one prediction record, None when it has no reference answer.

    VQAv2: :func:`~vistrace.data.metrics.vqa_accuracy`; DocVQA: :func:`~vistrace.data.metrics.anls`;
    Visual7W: :func:`~vistrace.data.metrics.mc_accuracy` against the correct answer (``answers[0]``);
    other datasets: ``exact_match``, the best :func:`~vistrace.data.metrics.exact_match` over the
    reference answers (letters and digits of every script compared, case-folded).
    """
    if vqa_rule not in ("official", "always_normalize"):
        raise ValueError(f"unknown VQA rule {vqa_rule!r}; expected 'official' or 'always_normalize'")
    answers = [str(a) for a in record.get("answers") or ()]
    if not answers or not isinstance(record.get("prediction"), str):
        return None
    prediction = str(record["prediction"])
    metric = metric_name(str(record.get("dataset", "")))
    if metric == "vqa_accuracy":
        return vqa_accuracy(prediction, answers, always_normalize=vqa_rule == "always_normalize")
    if metric == "anls":
        return anls(prediction, answers, threshold=anls_threshold)
    if metric == "mc_accuracy":
        return mc_accuracy(prediction, answers[0], rule=mc_rule)
    return max(exact_match(prediction, answer) for answer in answers)


def is_correct(
    record: Mapping[str, Any],
    rule: str = "paper",
    *,
    vqa_rule: VqaRule = "official",
    mc_rule: McRule = "paper",
    anls_threshold: float = 0.5,
) -> bool:
    """Whether a prediction record belongs to the correct set under ``rule``.

    - ``"paper"``: the FlowTracker code's test (:mod:`vistrace.data.paper_rules`): VQAv2
      :func:`~vistrace.data.paper_rules.paper_vqa_kept`, Visual7W
      :func:`~vistrace.data.paper_rules.paper_visual7w_kept`, DocVQA
      :func:`~vistrace.data.paper_rules.paper_docvqa_kept`; refused for other datasets;
    - ``"all_agree"`` (VQAv2 only): every annotator's answer equals the prediction
      (:func:`~vistrace.data.metrics.vqa_all_agree`, processed as ``vqa_rule`` says);
    - ``"score>X"`` / ``"score>=X"``: :func:`score_record` compared with ``X``.

    A record without generated tokens or without reference answers is never correct.
    """
    dataset = str(record.get("dataset", ""))
    parsed = _parse_rule(rule, dataset)
    answers = [str(a) for a in record.get("answers") or ()]
    if not record.get("generated_ids") or not answers:
        return False
    prediction = str(record.get("prediction", ""))
    if parsed == "paper":
        if dataset == "vqav2":
            return paper_vqa_kept(prediction, answers)
        if dataset == "visual7w":
            return paper_visual7w_kept(prediction, answers[0])
        return paper_docvqa_kept(prediction, answers)
    if parsed == "all_agree":
        return vqa_all_agree(prediction, answers, always_normalize=vqa_rule == "always_normalize")
    operator, threshold = parsed
    score = score_record(record, vqa_rule=vqa_rule, mc_rule=mc_rule, anls_threshold=anls_threshold)
    return score is not None and (score >= threshold if operator == ">=" else score > threshold)


def _parse_rule(rule: str, dataset: str) -> tuple[str, float] | Literal["paper", "all_agree"]:
    """(operator, threshold) of a score rule, or the name of a named rule; ValueError for a bad rule
    or a rule that does not apply to ``dataset``."""
    if rule == "paper":
        if dataset not in PAPER_DATASETS:
            raise ValueError(
                f"rule 'paper' is the FlowTracker code's test for {', '.join(PAPER_DATASETS)}, not "
                f"{dataset!r}; use score>0 (a match) or score>=X"
            )
        return "paper"
    if rule == "all_agree":
        if dataset != "vqav2":
            raise ValueError(f"rule 'all_agree' needs VQAv2 predictions, not {dataset!r}")
        return "all_agree"
    match = _SCORE_RULE.match(rule.strip())
    if match is None:
        raise ValueError(
            f"unknown correct-set rule {rule!r}; expected 'paper', 'all_agree', 'score>X' or 'score>=X'"
        )
    return match.group(1), float(match.group(2))


def record_categories(record: Mapping[str, Any]) -> list[str]:
    """Every category of a prediction record (``categories``, else ``category``), ``(none)`` when none.

    A question of several categories (DocVQA ``question_types``) is counted in each.
    """
    values = record.get("categories") or [record.get("category")]
    names = [NO_CATEGORY if value is None else str(value) for value in values]
    return list(dict.fromkeys(names))


def _id_key(value: Any) -> tuple[int, int, str]:
    """Sort key of ids: integers in numeric order first, then other ids as text."""
    text = str(value)
    return (0, int(text), "") if text.isdigit() else (1, 0, text)


def record_problem(record: Mapping[str, Any]) -> str | None:
    """Why a prediction record cannot be scored or traced (wrong or missing field), or None.

    Types are checked, never coerced: ``id`` text or integer, ``prediction`` text, ``answers`` a
    list of text, ``generated_ids`` a list of non-negative integers, ``category`` text."""
    record_id = record.get("id")
    if record_id is None or isinstance(record_id, bool) or not isinstance(record_id, str | int):
        return "no `id` (text or integer)"
    if not isinstance(record.get("prediction"), str):
        return "no `prediction` text" if "prediction" not in record else "`prediction` is not text"
    answers = record.get("answers")
    if answers is not None and not (isinstance(answers, list) and all(isinstance(a, str) for a in answers)):
        return "`answers` is not a list of text"
    ids = record.get("generated_ids")
    if ids is not None and not (
        isinstance(ids, list) and all(isinstance(t, int) and not isinstance(t, bool) and t >= 0 for t in ids)
    ):
        return "`generated_ids` is not a list of non-negative integers"
    if record.get("category") is not None and not isinstance(record["category"], str):
        return "`category` is not text"
    categories = record.get("categories")
    if categories is not None and not (
        isinstance(categories, list) and all(isinstance(c, str) for c in categories)
    ):
        return "`categories` is not a list of text"
    return None


def _load_run(run_dir: Path) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """The prediction records (one per id, the first kept) and the run's config.

    A line that is not a JSON object, or a record with a missing or mistyped field
    (:func:`record_problem`), is skipped with a warning naming the file, line and id."""
    predictions = run_dir / PREDICTIONS_FILE
    if not predictions.is_file():
        raise FileNotFoundError(f"{run_dir}: no {PREDICTIONS_FILE}; run the evaluation first")
    by_id: dict[str, dict[str, Any]] = {}
    first_line: dict[str, int] = {}
    for number, record in iter_jsonl(predictions):
        problem = record_problem(record)
        if problem is None and str(record["id"]) in first_line:
            problem = f"duplicate id, also on line {first_line[str(record['id'])]}; the first is kept"
        if problem is not None:
            logger.warning("%s: line %d (id %s) skipped: %s", predictions, number, record.get("id"), problem)
            continue
        by_id[str(record["id"])] = record
        first_line[str(record["id"])] = number
    return list(by_id.values()), read_config(run_dir)


def _run_dataset(records: Sequence[Mapping[str, Any]], config: Mapping[str, Any]) -> str:
    datasets = {str(record.get("dataset", "")) for record in records}
    if len(datasets) > 1:
        raise ValueError(f"predictions of several datasets in one run: {sorted(datasets)}")
    return str(config.get("dataset") or (datasets.pop() if datasets else ""))


@dataclass(frozen=True)
class CategoryScore:
    """Mean score (in [0, 1]) of the ``count`` scored predictions of one category (or ``overall``)."""

    category: str
    count: int
    score: float


@dataclass(frozen=True)
class ScoreTable:
    """Scores of one run: overall and per category (sorted by name), with the rules used.

    ``unscored``: predictions without reference answers; ``skipped``: lines of ``skipped.jsonl``.
    """

    run_dir: Path
    dataset: str
    metric: str
    settings: dict[str, Any]
    overall: CategoryScore
    categories: tuple[CategoryScore, ...]
    unscored: int
    skipped: int

    def to_dict(self) -> dict[str, Any]:
        """The content of ``scores.json``."""
        return {
            "run_dir": str(self.run_dir),
            "dataset": self.dataset,
            "metric": self.metric,
            "settings": self.settings,
            "overall": asdict(self.overall),
            "categories": [asdict(c) for c in self.categories],
            "unscored": self.unscored,
            "skipped": self.skipped,
        }

    def format_table(self) -> str:
        """A plain-text table: one row per category then the overall row, scores in percent."""
        rows = [(c.category, c.count, c.score) for c in (*self.categories, self.overall)]
        width = max(len("category"), *(len(name) for name, _, _ in rows))
        lines = [
            f"{self.dataset} — {self.metric} ({', '.join(f'{k}={v}' for k, v in self.settings.items())})"
        ]
        lines.append(f"{'category':<{width}}  {'count':>7}  {'score':>7}")
        lines.extend(f"{name:<{width}}  {count:>7}  {100 * score:>7.2f}" for name, count, score in rows)
        if self.unscored or self.skipped:
            lines.append(f"unscored (no reference answer): {self.unscored}; skipped examples: {self.skipped}")
        return "\n".join(lines)


def score_run(
    run_dir: str | Path,
    *,
    vqa_rule: VqaRule = "official",
    mc_rule: McRule = "paper",
    anls_threshold: float = 0.5,
) -> ScoreTable:
    """Score every prediction of ``run_dir`` and write ``scores.json`` and ``scores.csv`` there.

    The metric follows the run's dataset (see :func:`score_record`); the score of a category is the
    mean over its predictions that have reference answers (a prediction of several categories counts
    in each; ``overall`` counts it once).
    """
    run = Path(run_dir)
    records, config = _load_run(run)
    dataset = _run_dataset(records, config)
    per_category: dict[str, list[float]] = {}
    every: list[float] = []
    unscored = 0
    for record in records:
        score = score_record(record, vqa_rule=vqa_rule, mc_rule=mc_rule, anls_threshold=anls_threshold)
        if score is None:
            unscored += 1
            continue
        every.append(score)
        for name in record_categories(record):
            per_category.setdefault(name, []).append(score)
    categories = tuple(
        CategoryScore(name, len(values), sum(values) / len(values))
        for name, values in sorted(per_category.items())
    )
    overall = CategoryScore("overall", len(every), sum(every) / len(every) if every else 0.0)
    metric = metric_name(dataset)
    settings: dict[str, Any] = {"mc_rule": mc_rule}
    if metric == "vqa_accuracy":
        settings = {"vqa_rule": vqa_rule}
    elif metric == "anls":
        settings = {"anls_threshold": anls_threshold}
    table = ScoreTable(
        run, dataset, metric, settings, overall, categories, unscored, len(read_jsonl(run / SKIPPED_FILE))
    )
    write_json(run / "scores.json", table.to_dict())
    with (run / "scores.csv").open("w", encoding="utf-8", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["metric", "category", "count", "score"])
        for row in (overall, *categories):
            writer.writerow([metric, row.category, row.count, f"{row.score:.6f}"])
    return table


@dataclass(frozen=True)
class CategoryCount:
    """Correct-set counts of one category (or ``overall``): ``correct`` of ``total`` predictions,
    ``kept`` after sampling, and the mean number of answer tokens of the kept ones."""

    category: str
    correct: int
    total: int
    kept: int
    mean_answer_tokens: float


@dataclass(frozen=True)
class BuildSummary:
    """What :func:`build_analysis_set` wrote, with its settings and per-category counts."""

    out_file: Path
    summary_file: Path
    run_dir: Path
    model: str | None
    dataset: str
    rule: str
    settings: dict[str, Any]
    per_category: int | None
    seed: int
    overall: CategoryCount
    categories: tuple[CategoryCount, ...]

    def to_dict(self) -> dict[str, Any]:
        """The content of the ``.summary.json`` file."""
        data = asdict(self)
        for key in ("out_file", "summary_file", "run_dir"):
            data[key] = str(data[key])
        data["categories"] = [asdict(c) for c in self.categories]
        return data

    def format_table(self) -> str:
        """A plain-text table: correct / total / kept and mean answer tokens per category, then overall."""
        rows = [*self.categories, self.overall]
        width = max(len("category"), *(len(row.category) for row in rows))
        head = f"{self.dataset} correct set, rule {self.rule!r}"
        if self.per_category is not None:
            head += f", at most {self.per_category} per category (seed {self.seed})"
        lines = [head, f"{'category':<{width}}  {'correct':>7}  {'total':>7}  {'kept':>7}  {'tokens':>7}"]
        lines.extend(
            f"{r.category:<{width}}  {r.correct:>7}  {r.total:>7}  {r.kept:>7}  {r.mean_answer_tokens:>7.2f}"
            for r in rows
        )
        return "\n".join(lines)


def _trace_record(record: Mapping[str, Any], score: float | None) -> dict[str, Any]:
    """The trace input line of a correct prediction: trace fields first, then the metadata."""
    out: dict[str, Any] = {
        "id": record["id"],
        "image": record["image"],
        "prompt": record["prompt"],
        "answer_tokens": [int(t) for t in record["generated_ids"]],
        "answer": record.get("prediction", ""),
        "category": record.get("category"),
        "dataset": record.get("dataset"),
        "question": record.get("question"),
        "answers": record.get("answers"),
        "options": record.get("options"),
        "score": score,
    }
    for key, value in record.items():
        if key not in _DROPPED_KEYS:
            out.setdefault(key, value)
    return out


def _count(category: str, correct: int, total: int, kept: Sequence[Mapping[str, Any]]) -> CategoryCount:
    lengths = [len(r["answer_tokens"]) for r in kept]
    return CategoryCount(category, correct, total, len(kept), sum(lengths) / len(lengths) if lengths else 0.0)


def summary_path(out_file: str | Path) -> Path:
    """Where the summary of an analysis set goes: ``analysis.jsonl`` -> ``analysis.summary.json``."""
    out = Path(out_file)
    return out.with_name(f"{out.stem}.summary.json")


def _draw(
    correct: Mapping[str, Sequence[dict[str, Any]]],
    order: Sequence[str],
    per_category: int,
    seed: int,
    paper: bool,
) -> list[dict[str, Any]]:
    """The records kept by per-category sampling (each at most once), in the order drawn.

    ``paper``: one ``random.Random(seed)`` for every category in ``order``, a category with at least
    ``per_category`` correct records drawing ``sample(records, per_category)`` from them in
    prediction-file order, as ``create_vqa.py`` / ``create_visual7w.py`` do. Otherwise a fresh
    ``random.Random(seed)`` per category, drawing only when it has more than ``per_category``, from
    its records in id order.
    """
    generator = random.Random(seed)
    kept: dict[str, dict[str, Any]] = {}
    for category in order:
        population = list(correct.get(category, ()))
        if not paper:
            population.sort(key=lambda r: _id_key(r["id"]))
            generator = random.Random(seed)
        if len(population) > per_category or (paper and len(population) == per_category):
            population = generator.sample(population, per_category)
        for record in population:
            kept.setdefault(str(record["id"]), record)
    return list(kept.values())


def build_analysis_set(
    run_dir: str | Path,
    out_file: str | Path,
    *,
    per_category: int | None = None,
    seed: int = 42,
    correct_rule: str = "paper",
    vqa_rule: VqaRule = "official",
    mc_rule: McRule = "paper",
    anls_threshold: float = 0.5,
) -> BuildSummary:
    """Write the correct predictions of ``run_dir`` as trace input JSONL to ``out_file``.

    Correctness follows :func:`is_correct` with ``correct_rule``. With ``per_category``, at most
    that many records per category are drawn (see :func:`_draw`): under ``paper`` as the paper's
    ``create_*.py`` scripts draw (one generator, categories in :data:`PAPER_CATEGORY_ORDER` then any
    others by name, prediction-file order; the paper samples no DocVQA set, so ``per_category`` is
    refused there), otherwise a fresh generator per category, categories by name, id order. A record
    of several categories is a candidate in each and kept once. Lines are in id order. The summary
    goes to :func:`summary_path` and is returned.
    """
    if per_category is not None and per_category < 1:
        raise ValueError(f"per_category must be at least 1, got {per_category}")
    if vqa_rule not in ("official", "always_normalize"):
        raise ValueError(f"unknown VQA rule {vqa_rule!r}; expected 'official' or 'always_normalize'")
    if mc_rule not in ("paper", "official"):
        raise ValueError(f"unknown Visual7W rule {mc_rule!r}; expected 'paper' or 'official'")
    run = Path(run_dir)
    out = check_writable_target(out_file)
    check_writable_target(summary_path(out))
    records, config = _load_run(run)
    dataset = _run_dataset(records, config)
    paper = _parse_rule(correct_rule, dataset) == "paper"
    if paper and per_category is not None and dataset == "docvqa":
        raise ValueError(
            "rule 'paper' keeps every correct DocVQA question (create_docvqa.py draws no sample); "
            "drop the per-category limit or use a score rule"
        )
    rules: dict[str, Any] = {"vqa_rule": vqa_rule, "mc_rule": mc_rule, "anls_threshold": anls_threshold}
    totals: dict[str, int] = {}
    correct: dict[str, list[dict[str, Any]]] = {}
    for record in records:
        names = record_categories(record)
        for name in names:
            totals[name] = totals.get(name, 0) + 1
            correct.setdefault(name, [])
        if is_correct(record, correct_rule, **rules):
            missing = [key for key in ("image", "prompt") if not isinstance(record.get(key), str)]
            if missing:
                logger.warning(
                    "%s: id %s left out of the analysis set: no %s text",
                    run / PREDICTIONS_FILE,
                    record["id"],
                    " or ".join(f"`{key}`" for key in missing),
                )
                continue
            traced = _trace_record(record, score_record(record, **rules))
            for name in names:
                correct[name].append(traced)
    if per_category is None:
        chosen = {str(r["id"]): r for rows in correct.values() for r in rows}
        kept_all = list(chosen.values())
    else:
        first = PAPER_CATEGORY_ORDER.get(dataset, ()) if paper else ()
        order = [*(c for c in first if c in totals), *sorted(c for c in totals if c not in first)]
        kept_all = _draw(correct, order, per_category, seed, paper)
    kept_all.sort(key=lambda r: _id_key(r["id"]))
    kept_ids = {str(r["id"]) for r in kept_all}
    counts = [
        _count(name, len(correct[name]), totals[name], [r for r in correct[name] if str(r["id"]) in kept_ids])
        for name in sorted(totals)
    ]
    n_correct = len({str(r["id"]) for rows in correct.values() for r in rows})
    overall = _count("overall", n_correct, len(records), kept_all)

    text = "".join(json.dumps(record, ensure_ascii=False) + "\n" for record in kept_all)
    write_atomic(out, lambda temporary: temporary.write_text(text, encoding="utf-8"))
    summary = BuildSummary(
        out_file=out,
        summary_file=summary_path(out),
        run_dir=run,
        model=config.get("model"),
        dataset=dataset,
        rule=correct_rule,
        settings=rules,
        per_category=per_category,
        seed=seed,
        overall=overall,
        categories=tuple(counts),
    )
    write_json(summary.summary_file, summary.to_dict())
    return summary
