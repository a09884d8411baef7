"""`vistrace build`: the correct predictions of an eval run as the trace input, sampled per category."""

from __future__ import annotations

import json
import logging
import random
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from vistrace.runs.folder import check_writable_target, write_atomic, write_json
from vistrace.runs.predictions import (
    PREDICTIONS_FILE,
    McRule,
    VqaRule,
    id_key,
    is_correct,
    load_predictions,
    parse_rule,
    record_categories,
    run_dataset,
    score_record,
)
from vistrace.runs.shard import POSITION

__all__ = ["PAPER_CATEGORY_ORDER", "BuildSummary", "CategoryCount", "build_analysis_set", "summary_path"]

logger = logging.getLogger(__name__)

_DROPPED_KEYS = ("generated_ids", "prediction", POSITION)  # the eval run's order, not the trace's
PAPER_CATEGORY_ORDER: dict[str, tuple[str, ...]] = {
    "vqav2": ("other", "yes/no", "number"),
    "visual7w": ("what", "where", "how", "who", "when", "why"),
}
"""The order in which the paper's ``create_vqa.py`` / ``create_visual7w.py`` draw their per-category
samples from one generator seeded once (VQAv2 answer types as the annotations spell them)."""


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
            population.sort(key=lambda r: id_key(r["id"]))
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
    records, config = load_predictions(run)
    dataset = run_dataset(records, config)
    paper = parse_rule(correct_rule, dataset) == "paper"
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
    kept_all.sort(key=lambda r: id_key(r["id"]))
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
