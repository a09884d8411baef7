"""`vistrace export`: the records of a trace run folder, checked, as JSONL, CSV or Parquet.

Every score of :mod:`vistrace.knockout.scores` is recomputed from a record's per-token
probabilities (`p_full_tokens`, `token_probs`); records written before those were stored have only
the product score, their own `p_full` and `probs` (:func:`record_scores`)."""

from __future__ import annotations

import json
import logging
import math
from pathlib import Path
from typing import Any

import torch

from vistrace.knockout.scores import SCORES, change, score
from vistrace.runs.folder import check_writable_target, write_atomic
from vistrace.runs.shard import read_union

__all__ = [
    "EXPORT_FIELDS",
    "LAYER_PROBS_FILE",
    "RESULTS_FILE",
    "RESULT_KEY",
    "change_column",
    "export_results",
    "read_layer_probs",
    "read_results",
    "record_score",
    "record_scores",
    "result_key",
    "result_problem",
    "score_column",
    "token_probabilities",
]

RESULTS_FILE = "results.jsonl"
RESULT_KEY = ("id", "pathway", "k", "mode", "temperature", "model")
"""The fields that name one record of a trace run: a resumed run skips a key already written."""

LAYER_PROBS_FILE = "layer_probs.jsonl"
"""Per sample (`id`), the clean answer's per-token probabilities after every decoder layer (L × T)."""

log = logging.getLogger(__name__)

EXPORT_FIELDS = (
    "id",
    "pathway",
    "k",
    "mode",
    "temperature",
    "model",
    "category",
    "categories",
    "dataset",
    "p_full",
    "probs",
)
"""The fields every exported row starts with; then `score` (the one `p_full` and `probs` use), the
per-token probabilities and, per score of `SCORES`, :func:`score_column` and :func:`change_column`."""


def score_column(name: str) -> str:
    """`score_product`, `score_geometric`, `score_first`, `score_mean_log`: the unblocked score."""
    return "score_" + name.replace("-", "_")


def change_column(name: str) -> str:
    """`change_<score>`: per centre layer, the change of the score (`vistrace.knockout.scores.change`)."""
    return "change_" + name.replace("-", "_")


def record_score(record: dict[str, Any]) -> str:
    """The score of a record's `p_full` and `probs`; product for records that do not name one."""
    return str(record.get("score") or "product")


def token_probabilities(record: dict[str, Any]) -> tuple[torch.Tensor, torch.Tensor] | None:
    """(T,) unblocked and (L, T) blocked per-token probabilities of a record (float64), or None
    when it has none (written before they were stored)."""
    full, blocked = record.get("p_full_tokens"), record.get("token_probs")
    if not full or not blocked:
        return None
    return torch.tensor(full, dtype=torch.float64), torch.tensor(blocked, dtype=torch.float64)


def record_scores(
    record: dict[str, Any], name: str, *, recompute: bool = True
) -> tuple[float, list[float]] | None:
    """The unblocked score `name` and its per-layer values with the pathway blocked.

    Recomputed from the per-token probabilities when the record has them (with `recompute` False, the
    record's own `p_full` and `probs` when they are of score `name`); else the record's own numbers
    when they are of that score; else None."""
    own = record_score(record) == name
    tokens = token_probabilities(record)
    if tokens is None or (own and not recompute):
        return (float(record["p_full"]), [float(p) for p in record["probs"]]) if own else None
    full, blocked = tokens
    return float(score(name, full)), [float(v) for v in score(name, blocked)]


def _finite(value: float) -> float | None:
    return value if math.isfinite(value) else None


def _score_fields(record: dict[str, Any]) -> dict[str, Any]:
    """Per score, the unblocked score and the per-layer change (None where it cannot be computed)."""
    fields: dict[str, Any] = {}
    for name in SCORES:
        values = record_scores(record, name)
        if values is None:
            fields[score_column(name)], fields[change_column(name)] = None, None
            continue
        full, blocked = values
        changes = change(
            name, torch.tensor(blocked, dtype=torch.float64), torch.tensor(full, dtype=torch.float64)
        )
        fields[score_column(name)] = _finite(full)
        fields[change_column(name)] = [_finite(float(c)) for c in changes]
    return fields


def read_layer_probs(run_dir: str | Path) -> dict[str, list[list[float]]]:
    """Per sample id, the clean answer's per-token probability after every decoder layer (L × T), from
    `run_dir/layer_probs.jsonl` and its shards (written by `vistrace trace --layer-probs`); {} when
    there is none."""
    found: dict[str, list[list[float]]] = {}
    for path, number, record in read_union(Path(run_dir), LAYER_PROBS_FILE, key=lambda r: str(r.get("id"))):
        rows = record.get("layer_probs")
        if not isinstance(record.get("id"), str) or not (
            isinstance(rows, list) and rows and all(isinstance(r, list) and r for r in rows)
        ):
            log.warning("%s: line %d skipped: no `id` or no `layer_probs` rows", path, number)
            continue
        found[record["id"]] = rows
    return found


def result_problem(record: dict[str, Any]) -> str | None:
    """Why a line of `results.jsonl` cannot be used (missing or mistyped field), or None."""
    for field in ("id", "pathway", "mode"):
        if not isinstance(record.get(field), str):
            return f"`{field}` is missing or not text"
    if not isinstance(record.get("k"), int) or isinstance(record.get("k"), bool):
        return "`k` is missing or not an integer"
    p_full, probs = record.get("p_full"), record.get("probs")
    if not isinstance(p_full, int | float) or isinstance(p_full, bool) or not math.isfinite(p_full):
        return "`p_full` is missing or not a finite number"
    if not isinstance(probs, list) or not probs:
        return "`probs` is missing or not a list"
    if not all(isinstance(p, int | float) and not isinstance(p, bool) and math.isfinite(p) for p in probs):
        return "`probs` holds a value that is not a finite number"
    if record_score(record) not in SCORES:
        return f"`score` {record.get('score')!r} is not one of {', '.join(SCORES)}"
    full, blocked = record.get("p_full_tokens"), record.get("token_probs")
    if full is not None or blocked is not None:
        if not (isinstance(full, list) and full and all(_number(p) for p in full)):
            return "`p_full_tokens` is not a list of finite numbers"
        if not (
            isinstance(blocked, list)
            and len(blocked) == len(probs)
            and all(
                isinstance(r, list) and len(r) == len(full) and all(_number(p) for p in r) for r in blocked
            )
        ):
            return "`token_probs` is not one row of per-token probabilities per layer"
    if record.get("category") is not None and not isinstance(record["category"], str):
        return "`category` is not text"
    categories = record.get("categories")
    if categories is not None and not (
        isinstance(categories, list) and all(isinstance(c, str) for c in categories)
    ):
        return "`categories` is not a list of text"
    return None


def _number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)


def result_key(record: dict[str, Any]) -> tuple[str, ...]:
    """The :data:`RESULT_KEY` fields of a trace record, as JSON text."""
    return tuple(json.dumps(record.get(field), sort_keys=True) for field in RESULT_KEY)


def read_results(run_dir: str | Path) -> list[dict[str, Any]]:
    """The usable records of `run_dir/results.jsonl` and its shards (:mod:`vistrace.runs.shard`),
    in input order; a bad line is skipped with a warning naming the file, line and reason.
    ValueError when the folder holds none."""
    folder = Path(run_dir)
    path = folder / RESULTS_FILE
    union = read_union(folder, RESULTS_FILE, key=lambda r: None if result_problem(r) else result_key(r))
    if not union and not path.is_file():
        raise ValueError(f"{run_dir}: no results.jsonl; is it a `vistrace trace` run folder?")
    records = []
    for source, number, record in union:
        problem = result_problem(record)
        if problem is not None:
            log.warning("%s: line %d (id %s) skipped: %s", source, number, record.get("id"), problem)
            continue
        records.append(record)
    if not records:
        raise ValueError(f"{path}: no usable result; run `vistrace trace` into {run_dir} first")
    return records


def export_results(run_dir: str | Path, out_file: str | Path, fmt: str) -> Path:
    """One row per (id, pathway, k, mode) with `p_full`, `probs` (per centre layer), category and
    categories (CSV: joined with `|`), `score` (the score of `p_full` and `probs`), and per score of
    `SCORES` the unblocked score (`score_product` …) and its change per centre layer
    (`change_product` …; CSV: `change_product_l0` …) recomputed from the per-token probabilities;
    JSONL and Parquet also carry `p_full_tokens`, `token_probs` and the sample's `layer_probs`.
    Records without per-token probabilities (older runs) leave those empty and have the product score
    only. The run's own files are never overwritten; ValueError when the run holds no usable result."""
    if fmt not in ("jsonl", "csv", "parquet"):
        raise ValueError(f"--format {fmt!r}: choose jsonl, csv or parquet")
    target = check_writable_target(out_file)
    layer_probs = read_layer_probs(run_dir)
    rows: list[dict[str, Any]] = [
        {
            **{key: r.get(key) for key in EXPORT_FIELDS},
            "score": record_score(r),
            "p_full_tokens": r.get("p_full_tokens"),
            "token_probs": r.get("token_probs"),
            "layer_probs": layer_probs.get(r["id"]),
            **_score_fields(r),
        }
        for r in read_results(run_dir)
    ]
    if fmt == "jsonl":
        text = "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows)
        write_atomic(target, lambda temporary: temporary.write_text(text, encoding="utf-8"))
    elif fmt == "csv":
        write_atomic(target, lambda temporary: _write_csv(temporary, rows))
    else:
        try:
            import pyarrow as pa
            import pyarrow.parquet as pq
        except ImportError:
            raise RuntimeError("parquet export needs pyarrow: pip install pyarrow") from None
        write_atomic(target, lambda temporary: pq.write_table(pa.Table.from_pylist(rows), temporary))
    return target


def _write_csv(path: Path, rows: list[dict[str, Any]]) -> None:
    import csv

    with path.open("w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle)
        n_layers = max((len(r["probs"]) for r in rows), default=0)
        writer.writerow(
            ["id", "pathway", "k", "mode", "temperature", "category", "categories", "p_full"]
            + [f"prob_l{i}" for i in range(n_layers)]
            + ["score", *(score_column(name) for name in SCORES)]
            + [f"{change_column(name)}_l{i}" for name in SCORES for i in range(n_layers)]
        )

        def padded(values: list[Any] | None) -> list[Any]:
            values = values or []
            return [("" if v is None else v) for v in values] + [""] * (n_layers - len(values))

        for r in rows:
            writer.writerow(
                [
                    r["id"],
                    r["pathway"],
                    r["k"],
                    r["mode"],
                    r["temperature"],
                    r["category"],
                    "|".join(r["categories"] or []),
                    r["p_full"],
                    *padded(r["probs"]),
                    r["score"],
                    *("" if r[score_column(name)] is None else r[score_column(name)] for name in SCORES),
                    *(v for name in SCORES for v in padded(r[change_column(name)])),
                ]
            )
