"""`vistrace trace`: knockout sweeps over a JSONL file of samples, resumable, one record per
(sample, pathway, k, mode, temperature, model).

Each record holds `p_full` and `probs` under the run's `score` (product unless `--score` names
another), the per-token probabilities behind them (`p_full_tokens`, `token_probs`: every score can be
recomputed, :func:`vistrace.runs.export.record_scores`) and the answer's `words` with their classes
(:mod:`vistrace.knockout.words`). With `layer_probs`, each sample's clean answer probability after
every decoder layer goes to `layer_probs.jsonl` (:func:`vistrace.runs.export.read_layer_probs`)."""

from __future__ import annotations

import json
import logging
import platform
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import transformers
from tqdm import tqdm

from vistrace import __version__
from vistrace.adapters import PreparedPrompt
from vistrace.hook.plan import KnockoutMode
from vistrace.knockout.lens import answer_probability_by_layer
from vistrace.knockout.sweep import KnockoutResult, KnockoutRunner, Pathway
from vistrace.knockout.words import answer_words
from vistrace.models.loading import LoadedModel
from vistrace.runs.config import TraceConfig, check_trace_options
from vistrace.runs.export import (
    EXPORT_FIELDS,
    LAYER_PROBS_FILE,
    RESULT_KEY,
    RESULTS_FILE,
    export_results,
    read_results,
    record_scores,
    result_problem,
)
from vistrace.runs.folder import open_run
from vistrace.runs.samples import SampleError, answer_token_ids, sample_input, special_token_problem
from vistrace.runs.shard import POSITION, Shard, launched_shard, open_store, read_union

__all__ = [
    "EXPORT_FIELDS",
    "RESULT_KEY",
    "SampleError",
    "TraceConfig",
    "TraceSummary",
    "answer_token_ids",
    "check_trace_options",
    "export_results",
    "read_results",
    "result_problem",
    "run_trace",
    "special_token_problem",
    "trace",
]

log = logging.getLogger(__name__)

SKIPPED_FILE = "skipped.jsonl"


@dataclass(frozen=True)
class TraceSummary:
    samples: int
    traced: int
    resumed: int
    skipped: int
    records: int
    out_dir: Path


def _load_samples(data_file: Path) -> list[tuple[int, dict[str, Any] | None, str | None]]:
    """(line number, record or None, error or None) for every non-empty line.

    A byte-order mark is ignored; a line that is not a JSON object, or whose `id` was already used
    by an earlier line, gets an error naming the line(s) and is skipped by the run."""
    rows: list[tuple[int, dict[str, Any] | None, str | None]] = []
    if not data_file.is_file():
        raise ValueError(f"--data {data_file}: no such file")
    first_line: dict[str, int] = {}
    with data_file.open(encoding="utf-8-sig", errors="replace") as handle:
        for number, line in enumerate(handle, start=1):
            if not line.strip():
                continue
            try:
                record = json.loads(line)
            except json.JSONDecodeError as error:
                rows.append((number, None, f"line {number} is not valid JSON ({error.msg})"))
                continue
            if not isinstance(record, dict):
                rows.append((number, None, f"line {number} is not a JSON object"))
                continue
            raw_id = record.get("id")
            if (raw_id is not None and not isinstance(raw_id, str | int)) or isinstance(raw_id, bool):
                rows.append((number, None, f"line {number}: `id` must be a string or an integer"))
                continue
            sample_id = str(raw_id) if raw_id is not None else f"line{number}"
            if sample_id in first_line:
                reason = f"duplicate id {sample_id!r} on lines {first_line[sample_id]} and {number}"
                rows.append((number, {"id": sample_id}, reason))
                continue
            first_line[sample_id] = number
            rows.append((number, record, None))
    return rows


def _versions() -> dict[str, str]:
    return {
        "vistrace": __version__,
        "transformers": transformers.__version__,
        "torch": torch.__version__,
        "python": platform.python_version(),
    }


def run_trace(loaded: LoadedModel, config: TraceConfig, shard: Shard | None = None) -> TraceSummary:
    """Run the sweep of `config` for every sample of its data file; results go to
    `out/results.jsonl`, failures to `out/skipped.jsonl`. Finished (sample, pathway, k) records are
    not redone. A relative `image` is resolved against `config.images`, else the data file's folder.

    The run folder (:func:`vistrace.runs.folder.open_run`) records the model, dtype, mode,
    temperature and data file in `config.json` (:meth:`TraceConfig.run_settings`); a resume with
    other ones is refused, as is a second process. `shard`: this process's share of a sharded run
    (:mod:`vistrace.runs.shard`; default: the launcher's, one process when none). The summary's
    counts are over every process."""
    shard = launched_shard(cpu=loaded.device.type == "cpu") if shard is None else shard
    parsed = config.parsed_pathways
    runner = KnockoutRunner(loaded, mode=config.mode, temperature=config.temperature)
    rows = _load_samples(config.data)[: config.limit if config.limit is not None else None]
    model_name = str(loaded.path)
    counts = {"traced": 0, "resumed": 0, "skipped": 0}
    with open_run(config.out, "trace", config.run_settings(loaded), rank=shard.rank) as out:
        shard.wait()  # every rank holds its lock before any of them reads or writes
        results = open_store(out, RESULTS_FILE, RESULT_KEY, shard)
        skipped_store = open_store(out, SKIPPED_FILE, ("id", "reason"), shard)
        layer_store = open_store(out, LAYER_PROBS_FILE, ("id",), shard) if config.layer_probs else None
        mine = [(position, row) for position, row in enumerate(rows) if shard.owns(position)]
        # Advanced as samples finish: a packed sweep pulls several samples before any is done.
        bar = tqdm(
            total=len(mine), desc=f"trace {config.mode}{shard.label}", unit="sample", position=shard.rank
        )

        def skip(item: _Pending | tuple[int, int, str], reason: str) -> None:
            position, number, sample_id = item if isinstance(item, tuple) else item.where
            log.warning("%s: line %d, sample %s skipped: %s", config.data, number, sample_id, reason)
            skipped_store.append([{"id": sample_id, "line": number, POSITION: position, "reason": reason}])
            counts["skipped"] += 1
            bar.update()

        def to_sweep() -> Iterator[tuple[_Pending, PreparedPrompt, list[int]]]:
            for position, (number, sample, error) in mine:
                sample_id = str(sample.get("id", f"line{number}")) if sample else f"line{number}"
                keys = [
                    {
                        "id": sample_id,
                        "pathway": p.name,
                        "k": k,
                        "mode": config.mode,
                        "temperature": runner.temperature,
                        "model": model_name,
                    }
                    for k in config.ks
                    for p in parsed
                ]
                if error is None and all(results.done(key) for key in keys):
                    counts["resumed"] += 1
                    bar.update()
                    continue
                try:
                    if error is not None or sample is None:
                        raise SampleError(error or "empty record")
                    prepared, answer = sample_input(loaded, sample, config)
                except SampleError as problem:
                    skip((position, number, sample_id), str(problem))
                    continue
                yield _Pending((position, number, sample_id), sample, prepared, answer), prepared, answer

        swept = runner.sweep(
            to_sweep(), parsed, config.ks, config.strategy, pack_bytes=config.pack_bytes(loaded)
        )
        for outcome in swept:
            item = outcome.tag
            if outcome.error is not None:
                skip(item, f"the knockout could not run ({outcome.error})")
                continue
            position, _, sample_id = item.where
            records = _records(loaded, runner, item.sample, sample_id, config, outcome.results, parsed)
            if layer_store is not None:  # before the results it goes with
                lens = answer_probability_by_layer(
                    loaded, item.prepared, item.answer, temperature=runner.temperature
                )
                layer_store.append([{"id": sample_id, POSITION: position, "layer_probs": lens.tolist()}])
            results.append([{**record, POSITION: position} for record in records])
            counts["traced"] += 1
            bar.update()
        bar.close()
        shard.wait()
        counts = shard.total(counts)
        total = len(read_union(out, RESULTS_FILE, key=results.key_of))
    return TraceSummary(
        len(rows), counts["traced"], counts["resumed"], counts["skipped"], total, Path(config.out)
    )


def trace(
    loaded: LoadedModel,
    data_file: str | Path,
    out_dir: str | Path,
    *,
    pathways: Sequence[str],
    ks: Sequence[int],
    mode: KnockoutMode = "strict",
    strategy: str = "fast",
    temperature: float | None = None,
    limit: int | None = None,
    images_dir: str | Path | None = None,
    score: str = "product",
    layer_probs: bool = False,
    pack_memory: float | None = None,
) -> TraceSummary:
    """:func:`run_trace` with the :class:`TraceConfig` of these arguments."""
    config = TraceConfig(
        data=Path(data_file),
        out=Path(out_dir),
        pathways=tuple(pathways),
        ks=tuple(ks),
        mode=mode,
        strategy=strategy,
        temperature=temperature,
        limit=limit,
        images=None if images_dir is None else Path(images_dir),
        score=score,
        layer_probs=layer_probs,
        pack_memory=pack_memory,
    )
    return run_trace(loaded, config)


@dataclass(frozen=True)
class _Pending:
    """A sample on its way through the sweep: (input position, line, id), the record, its inputs."""

    where: tuple[int, int, str]
    sample: dict[str, Any]
    prepared: PreparedPrompt
    answer: list[int]


def _records(
    loaded: LoadedModel,
    runner: KnockoutRunner,
    sample: dict[str, Any],
    sample_id: str,
    config: TraceConfig,
    swept: dict[int, KnockoutResult],
    parsed: list[Pathway],
) -> list[dict[str, Any]]:
    """The result records of one swept sample: one per pathway (`parsed`) and k."""
    categories = sample.get("categories")
    model_name = str(loaded.path)
    words = [
        {"text": w.text, "tokens": list(w.tokens), "kind": w.kind}
        for w in answer_words(loaded.processor.tokenizer, list(swept[config.ks[0]].answer_tokens))
    ]
    records = []
    for k in config.ks:
        result = swept[k]
        for pathway in parsed:
            record: dict[str, Any] = {
                "id": sample_id,
                "pathway": pathway.name,
                "k": k,
                "mode": runner.mode,
                "temperature": runner.temperature,
                "model": model_name,
                "strategy": config.strategy,
                "p_full": result.p_full,
                "probs": result.probs[pathway.name],
                "answer_tokens": list(result.answer_tokens),
                "category": sample.get("category"),
                "categories": categories,
                "dataset": sample.get("dataset"),
                "n_layers": runner.n_layers,
                "cross_layers": sorted(runner.cross),
                "versions": _versions(),
                "score": config.score,
                "p_full_tokens": list(result.p_full_tokens),
                "token_probs": result.token_probs[pathway.name],
                "words": words,
            }
            if config.score != "product":  # the product stays the runner's own numbers
                scored = record_scores(record, config.score)
                assert scored is not None
                record["p_full"], record["probs"] = scored
            records.append(record)
    return records
