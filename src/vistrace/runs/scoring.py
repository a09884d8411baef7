"""Score an evaluation run and build the correct-answer set that the knockout trace reads.

:func:`score_run` reads ``<run>/predictions.jsonl`` (written by :func:`vistrace.runs.evaluate.evaluate`)
and writes ``scores.json`` and ``scores.csv``; :func:`build_analysis_set` (:mod:`vistrace.runs.build`)
writes the trace input JSONL and its ``.summary.json``. The records are read and judged in
:mod:`vistrace.runs.predictions`. Definitions are in ``docs/datasets.md`` and ``docs/metrics.md``.
"""

from __future__ import annotations

import csv
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from vistrace.data.metrics import ScoreRules, metric_for
from vistrace.runs.build import (
    PAPER_CATEGORY_ORDER,
    BuildSummary,
    CategoryCount,
    build_analysis_set,
    summary_path,
)
from vistrace.runs.folder import write_json
from vistrace.runs.predictions import (
    NO_CATEGORY,
    SKIPPED_FILE,
    McRule,
    VqaRule,
    is_correct,
    load_predictions,
    metric_name,
    record_categories,
    record_problem,
    run_dataset,
    score_record,
)
from vistrace.runs.shard import read_union

__all__ = [
    "NO_CATEGORY",
    "PAPER_CATEGORY_ORDER",
    "BuildSummary",
    "CategoryCount",
    "CategoryScore",
    "McRule",
    "ScoreTable",
    "VqaRule",
    "build_analysis_set",
    "is_correct",
    "metric_name",
    "record_categories",
    "record_problem",
    "score_record",
    "score_run",
    "summary_path",
]


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
    records, config = load_predictions(run)
    dataset = run_dataset(records, config)
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
    registered = metric_for(dataset)
    metric = registered.name
    rules = ScoreRules(vqa_rule=vqa_rule, mc_rule=mc_rule, anls_threshold=anls_threshold)
    # A metric that reads no rule (exact match) records mc_rule, as scores.json always has.
    settings: dict[str, Any] = {field: getattr(rules, field) for field in registered.settings} or {
        "mc_rule": mc_rule
    }
    table = ScoreTable(
        run, dataset, metric, settings, overall, categories, unscored, len(read_union(run, SKIPPED_FILE))
    )
    write_json(run / "scores.json", table.to_dict())
    with (run / "scores.csv").open("w", encoding="utf-8", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["metric", "category", "count", "score"])
        for row in (overall, *categories):
            writer.writerow([metric, row.category, row.count, f"{row.score:.6f}"])
    return table
