"""The prediction records of an eval run: reading them, their categories, their score under the
dataset's metric, and whether they count as correct."""

from __future__ import annotations

import logging
import re
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, Literal

from vistrace.data.metrics import McRule, ScoreRules, VqaRule, metric_for, vqa_all_agree
from vistrace.data.metrics_text_rich import fgtracer_chartqa_kept, fgtracer_textvqa_kept
from vistrace.data.paper_rules import PAPER_DATASETS, paper_docvqa_kept, paper_visual7w_kept, paper_vqa_kept
from vistrace.runs.folder import read_config
from vistrace.runs.shard import read_union, shard_paths

__all__ = [
    "NO_CATEGORY",
    "PREDICTIONS_FILE",
    "SKIPPED_FILE",
    "McRule",
    "VqaRule",
    "id_key",
    "is_correct",
    "load_predictions",
    "metric_name",
    "parse_rule",
    "record_categories",
    "record_problem",
    "run_dataset",
    "score_record",
]

logger = logging.getLogger(__name__)

PREDICTIONS_FILE = "predictions.jsonl"
SKIPPED_FILE = "skipped.jsonl"
NO_CATEGORY = "(none)"
_SCORE_RULE = re.compile(r"^score\s*(>=|>)\s*([0-9]*\.?[0-9]+)$")


# FG-TRACER selects COCO captions by per-image CIDEr (> 20), which needs the whole evaluation set
# and Java's tokenizer: not a per-record test, so `paper` is refused there (use `generated`).
PAPER_RULE_DATASETS: tuple[str, ...] = (*PAPER_DATASETS, "textvqa", "chartqa")


def metric_name(dataset: str) -> str:
    """The name of a dataset's metric (:func:`vistrace.data.metrics.metric_for`): ``vqa_accuracy``,
    ``anls``, ``mc_accuracy``, a registered one, else ``exact_match``."""
    return metric_for(dataset).name


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
    other datasets: the metric registered for them
    (:func:`~vistrace.data.metrics.register_metric`), else ``exact_match``, the best
    :func:`~vistrace.data.metrics.exact_match` over the reference answers (letters and digits of
    every script compared, case-folded).
    """
    if vqa_rule not in ("official", "always_normalize"):
        raise ValueError(f"unknown VQA rule {vqa_rule!r}; expected 'official' or 'always_normalize'")
    answers = [str(a) for a in record.get("answers") or ()]
    if not answers or not isinstance(record.get("prediction"), str):
        return None
    rules = ScoreRules(vqa_rule=vqa_rule, mc_rule=mc_rule, anls_threshold=anls_threshold)
    return metric_for(str(record.get("dataset", ""))).score(str(record["prediction"]), answers, rules)


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
      :func:`~vistrace.data.paper_rules.paper_docvqa_kept`; FG-TRACER's for TextVQA and ChartQA
      (:func:`~vistrace.data.metrics_text_rich.fgtracer_textvqa_kept`,
      :func:`~vistrace.data.metrics_text_rich.fgtracer_chartqa_kept`); refused for other datasets;
    - ``"generated"``: every prediction with generated tokens: the model's own output is kept as the
      answer to trace (captions, free-form answers; no reference answer needed);
    - ``"all_agree"`` (VQAv2 only): every annotator's answer equals the prediction
      (:func:`~vistrace.data.metrics.vqa_all_agree`, processed as ``vqa_rule`` says);
    - ``"score>X"`` / ``"score>=X"``: :func:`score_record` compared with ``X``.

    A record without generated tokens or without reference answers is never correct.
    """
    dataset = str(record.get("dataset", ""))
    parsed = parse_rule(rule, dataset)
    answers = [str(a) for a in record.get("answers") or ()]
    if parsed == "generated":
        return bool(record.get("generated_ids"))
    if not record.get("generated_ids") or not answers:
        return False
    prediction = str(record.get("prediction", ""))
    if parsed == "paper":
        if dataset == "vqav2":
            return paper_vqa_kept(prediction, answers)
        if dataset == "visual7w":
            return paper_visual7w_kept(prediction, answers[0])
        if dataset == "textvqa":
            return fgtracer_textvqa_kept(prediction, answers)
        if dataset == "chartqa":
            return fgtracer_chartqa_kept(prediction, answers[0])
        return paper_docvqa_kept(prediction, answers)
    if parsed == "all_agree":
        return vqa_all_agree(prediction, answers, always_normalize=vqa_rule == "always_normalize")
    operator, threshold = parsed
    score = score_record(record, vqa_rule=vqa_rule, mc_rule=mc_rule, anls_threshold=anls_threshold)
    return score is not None and (score >= threshold if operator == ">=" else score > threshold)


def parse_rule(rule: str, dataset: str) -> tuple[str, float] | Literal["paper", "all_agree", "generated"]:
    """(operator, threshold) of a score rule, or the name of a named rule; ValueError for a bad rule
    or a rule that does not apply to ``dataset``."""
    if rule == "paper":
        if dataset not in PAPER_RULE_DATASETS:
            raise ValueError(
                f"rule 'paper' is the FlowTracker / FG-TRACER code's test for "
                f"{', '.join(PAPER_RULE_DATASETS)}, not {dataset!r}; use score>0 (a match), score>=X, "
                "or generated (the model's own output as the answer)"
            )
        return "paper"
    if rule == "generated":
        return "generated"
    if rule == "all_agree":
        if dataset != "vqav2":
            raise ValueError(f"rule 'all_agree' needs VQAv2 predictions, not {dataset!r}")
        return "all_agree"
    match = _SCORE_RULE.match(rule.strip())
    if match is None:
        raise ValueError(
            f"unknown correct-set rule {rule!r}; expected 'paper', 'all_agree', 'generated', 'score>X' or "
            "'score>=X'"
        )
    return match.group(1), float(match.group(2))


def record_categories(record: Mapping[str, Any]) -> list[str]:
    """Every category of a prediction record (``categories``, else ``category``), ``(none)`` when none.

    A question of several categories (DocVQA ``question_types``) is counted in each.
    """
    values = record.get("categories") or [record.get("category")]
    names = [NO_CATEGORY if value is None else str(value) for value in values]
    return list(dict.fromkeys(names))


def id_key(value: Any) -> tuple[int, int, str]:
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


def load_predictions(run_dir: Path) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """The prediction records (one per id, the first kept), in input order over every shard of a
    sharded run (:func:`vistrace.runs.shard.read_union`), and the run's config.

    A line that is not a JSON object, or a record with a missing or mistyped field
    (:func:`record_problem`), is skipped with a warning naming the file, line and id."""
    shards = shard_paths(run_dir, PREDICTIONS_FILE)
    if not shards:
        raise FileNotFoundError(f"{run_dir}: no {PREDICTIONS_FILE}; run the evaluation first")
    by_id: dict[str, dict[str, Any]] = {}
    first_line: dict[str, tuple[Path, int]] = {}
    for path, number, record in read_union(run_dir, PREDICTIONS_FILE):
        problem = record_problem(record)
        if problem is None and str(record["id"]) in first_line:
            first_path, first_number = first_line[str(record["id"])]
            where = f"line {first_number}" if first_path == path else f"{first_path} line {first_number}"
            problem = f"duplicate id, also on {where}; the first is kept"
        if problem is not None:
            logger.warning("%s: line %d (id %s) skipped: %s", path, number, record.get("id"), problem)
            continue
        by_id[str(record["id"])] = record
        first_line[str(record["id"])] = (path, number)
    return list(by_id.values()), read_config(run_dir)


def run_dataset(records: Sequence[Mapping[str, Any]], config: Mapping[str, Any]) -> str:
    datasets = {str(record.get("dataset", "")) for record in records}
    if len(datasets) > 1:
        raise ValueError(f"predictions of several datasets in one run: {sorted(datasets)}")
    return str(config.get("dataset") or (datasets.pop() if datasets else ""))
