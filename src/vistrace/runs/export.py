"""`vistrace export`: the records of a trace run folder, checked, as JSONL, CSV or Parquet."""

from __future__ import annotations

import json
import logging
import math
from pathlib import Path
from typing import Any

from vistrace.runs.folder import check_writable_target, iter_jsonl, write_atomic

__all__ = ["EXPORT_FIELDS", "export_results", "read_results", "result_problem"]

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
    if record.get("category") is not None and not isinstance(record["category"], str):
        return "`category` is not text"
    categories = record.get("categories")
    if categories is not None and not (
        isinstance(categories, list) and all(isinstance(c, str) for c in categories)
    ):
        return "`categories` is not a list of text"
    return None


def read_results(run_dir: str | Path) -> list[dict[str, Any]]:
    """The usable records of `run_dir/results.jsonl`; a bad line is skipped with a warning naming
    the file, line and reason. ValueError when the folder holds none."""
    path = Path(run_dir) / "results.jsonl"
    if not path.is_file():
        raise ValueError(f"{run_dir}: no results.jsonl; is it a `vistrace trace` run folder?")
    records = []
    for number, record in iter_jsonl(path):
        problem = result_problem(record)
        if problem is not None:
            log.warning("%s: line %d (id %s) skipped: %s", path, number, record.get("id"), problem)
            continue
        records.append(record)
    if not records:
        raise ValueError(f"{path}: no usable result; run `vistrace trace` into {run_dir} first")
    return records


def export_results(run_dir: str | Path, out_file: str | Path, fmt: str) -> Path:
    """One row per (id, pathway, k, mode) with `p_full`, `probs` (per centre layer), category and
    categories (CSV: joined with `|`). The run's own files are never overwritten; ValueError when
    the run holds no usable result."""
    if fmt not in ("jsonl", "csv", "parquet"):
        raise ValueError(f"--format {fmt!r}: choose jsonl, csv or parquet")
    target = check_writable_target(out_file)
    rows: list[dict[str, Any]] = [{key: r.get(key) for key in EXPORT_FIELDS} for r in read_results(run_dir)]
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
        )
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
                    *r["probs"],
                ]
            )
