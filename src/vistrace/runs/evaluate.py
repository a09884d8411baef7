"""Run a model over a dataset: the paper's prompts, greedy batched generation, resumable predictions.

:func:`evaluate` writes into one run folder:

- ``config.json``: the run settings; a later call with other settings refuses to resume;
- ``predictions.jsonl``: one JSON object per answered example, appended and synced batch by batch;
- ``skipped.jsonl``: one JSON object per example that could not be run in the latest call, and
  per record the dataset reader could not turn into an example (``unreadable``).

Examples whose id is already in ``predictions.jsonl`` are not run again.
"""

from __future__ import annotations

import json
import logging
import os
import time
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

from tqdm.auto import tqdm

from vistrace.data import Example, ReadResult, Skipped
from vistrace.models.loading import LoadedModel
from vistrace.runs.config import (
    DATASETS,
    GENERIC_DATASETS,
    GENERIC_MAX_NEW_TOKENS,
    PAPER_DATASETS,
    EvalConfig,
    run_config,
)
from vistrace.runs.eval_batches import BatchRunner, Skip, build_prompt, one_line
from vistrace.runs.folder import ConfigMismatchError, open_run, read_jsonl, repair_tail, shard_base
from vistrace.runs.predictions import PREDICTIONS_FILE, SKIPPED_FILE
from vistrace.runs.shard import POSITION, Shard, launched_shard, read_union, shard_paths

__all__ = [
    "DATASETS",
    "GENERIC_DATASETS",
    "GENERIC_MAX_NEW_TOKENS",
    "PAPER_DATASETS",
    "ConfigMismatchError",
    "EvalConfig",
    "EvalSummary",
    "build_prompt",
    "evaluate",
    "read_jsonl",
    "run_config",
    "run_eval",
]

logger = logging.getLogger(__name__)

CONFIG_FILE = "config.json"
_Runner = BatchRunner  # its earlier name


@dataclass(frozen=True)
class EvalSummary:
    """What one :func:`evaluate` call did.

    ``total``: examples considered (after ``limit``); ``resumed``: of those, already in
    ``predictions.jsonl`` before the call; ``generated``: answered by this call; ``skipped``:
    written to ``skipped.jsonl`` by this call; ``seconds``: wall time of the generation loop.
    """

    out_dir: Path
    predictions_file: Path
    skipped_file: Path
    config_file: Path
    total: int
    resumed: int
    generated: int
    skipped: int
    seconds: float

    @property
    def samples_per_second(self) -> float:
        """Examples processed (answered or skipped) by this call per second."""
        done = self.generated + self.skipped
        return done / self.seconds if self.seconds > 0 else 0.0


def _write_lines(handle: IO[str], records: Iterable[dict[str, Any]]) -> None:
    """Append JSON lines, then flush and fsync so that a crash loses no finished line."""
    for record in records:
        handle.write(json.dumps(record, ensure_ascii=False, default=str) + "\n")
    handle.flush()
    os.fsync(handle.fileno())


def run_eval(
    loaded: LoadedModel, config: EvalConfig, read: ReadResult | None = None, shard: Shard | None = None
) -> EvalSummary:
    """Answer the examples of `read` (default: ``config.read()``), the first ``config.limit`` of
    them, with greedy generation into ``config.out``.

    The prompt follows ``config.dataset``: the paper's for ``vqav2``, ``visual7w`` (options
    shuffled with ``config.seed``) and ``docvqa``; the question as it is for any other dataset. The
    user message is the image then the prompt, through the model's chat template; batches of
    ``config.batch_size`` are left padded. Examples already in ``out/predictions.jsonl`` are
    skipped; ``ConfigMismatchError`` when ``out/config.json`` holds other settings
    (:meth:`EvalConfig.run_settings`: the dataset file among them, so that a resume on another
    file is refused). Bad examples go to ``skipped.jsonl`` with a reason and a logged warning; the
    run goes on. The records the reader skipped (``read.skipped``) are written there too and counted
    as skipped, so that the file and the summary account for every record of the dataset. The
    folder is locked while the run writes (:func:`vistrace.runs.folder.open_run`). ``shard``: this
    process's share of a sharded run (:mod:`vistrace.runs.shard`; default: the launcher's, one
    process when none); the summary counts every process's examples.
    """
    read = config.read() if read is None else read
    shard = launched_shard(cpu=loaded.device.type == "cpu") if shard is None else shard
    with open_run(config.out, "eval", config.run_settings(loaded), rank=shard.rank) as out:
        shard.wait()  # every rank holds its lock before any of them reads or writes
        return _evaluate(loaded, read.examples, out, config, read.skipped, shard)


def evaluate(
    loaded: LoadedModel,
    examples: Iterable[Example],
    out_dir: str | Path,
    *,
    dataset: str,
    batch_size: int = 8,
    max_new_tokens: int | None = None,
    seed: int = 42,
    limit: int | None = None,
    unreadable: Iterable[Skipped] = (),
    source: str | Path | None = None,
) -> EvalSummary:
    """:func:`run_eval` of ``examples`` already read, with the :class:`EvalConfig` of these
    arguments; ``unreadable``: the records the reader skipped; ``source``: the dataset file
    (recorded in ``config.json``). ``max_new_tokens`` defaults to 25 (VQAv2, Visual7W), 512
    (DocVQA and generic data)."""
    config = EvalConfig(
        dataset=dataset,
        out=Path(out_dir),
        annotations=None if source is None else Path(source),
        batch_size=batch_size,
        max_new_tokens=max_new_tokens,
        seed=seed,
        limit=limit,
    )
    return run_eval(loaded, config, ReadResult(list(examples), list(unreadable)))


def _evaluate(
    loaded: LoadedModel,
    examples: Iterable[Example],
    out: Path,
    config: EvalConfig,
    unreadable: Iterable[Skipped],
    shard: Shard,
) -> EvalSummary:
    """The generation loop of :func:`run_eval` in the locked run folder `out`, over the examples
    `shard` owns."""
    dataset, batch_size, limit = config.dataset, config.batch_size, config.limit
    predictions, skipped_file = out / shard.file(PREDICTIONS_FILE), out / shard.file(SKIPPED_FILE)
    repair_tail(predictions)
    finished = {str(record.get("id")) for _, _, record in read_union(out, PREDICTIONS_FILE)}
    if shard.rank == 0:  # the skips of an earlier call with more processes are not this call's
        for stale in shard_paths(out, SKIPPED_FILE):
            if shard_base(stale.name)[1] >= shard.world:
                stale.unlink()

    chosen = list(examples)
    if limit is not None:
        chosen = chosen[:limit]
    resumed = len({example.id for example in chosen if example.id in finished})
    position_of: dict[str, int] = {}
    runner = BatchRunner(loaded, dataset, config.seed, config.new_tokens, out)
    tokenizer = runner.tokenizer
    side = tokenizer.padding_side
    generated = skipped = 0
    started = time.perf_counter()
    tokenizer.padding_side = "left"
    todo: list[Example] = []
    duplicates: list[dict[str, Any]] = []
    seen: dict[str, int] = {}
    for position, example in enumerate(chosen):
        if example.id in seen:
            if shard.owns(position):
                reason = f"duplicate id, examples {seen[example.id]} and {position + 1} of the dataset"
                duplicates.append(_skip_record(example, reason))
            continue
        seen[example.id] = position + 1
        if example.id not in finished and shard.owns(position):
            todo.append(example)
            position_of[example.id] = position
    try:
        with (
            predictions.open("a", encoding="utf-8") as pred_handle,
            skipped_file.open("w", encoding="utf-8") as skip_handle,
            tqdm(
                total=len(todo), unit="sample", desc=f"eval {dataset}{shard.label}", position=shard.rank
            ) as bar,
        ):
            unread = [
                {"id": s.id, "source": s.source, "reason": one_line(s.reason)}
                for s in (unreadable if shard.rank == 0 else ())
            ]
            _write_lines(skip_handle, [*unread, *duplicates])
            skipped = len(unread) + len(duplicates)
            for start in range(0, len(todo), batch_size):
                batch = todo[start : start + batch_size]
                skips: list[dict[str, Any]] = []
                items = []
                for example in batch:
                    try:
                        items.append(runner.prepare(example))
                    except Skip as exc:
                        skips.append(_skip_record(example, str(exc)))
                records, reasons = runner.generate(items) if items else ([], {})
                by_id = {example.id: example for example in batch}
                skips.extend(_skip_record(by_id[key], reason) for key, reason in reasons.items())
                _write_lines(pred_handle, [{**r, POSITION: position_of[r["id"]]} for r in records])
                _write_lines(skip_handle, skips)
                generated += len(records)
                skipped += len(skips)
                bar.update(len(batch))
                bar.set_postfix(skipped=skipped)
    finally:
        tokenizer.padding_side = side
    shard.wait()
    counts = shard.total({"generated": generated, "skipped": skipped})
    seconds = time.perf_counter() - started
    return EvalSummary(
        out,
        out / PREDICTIONS_FILE,
        out / SKIPPED_FILE,
        out / CONFIG_FILE,
        len(chosen),
        resumed,
        counts["generated"],
        counts["skipped"],
        seconds,
    )


def _skip_record(example: Example, reason: str) -> dict[str, Any]:
    """One line of ``skipped.jsonl``, logged as a warning."""
    line = one_line(reason)
    logger.warning("skipped example %s: %s", example.id, line)
    return {"id": example.id, "image": str(example.image), "question": example.question, "reason": line}
