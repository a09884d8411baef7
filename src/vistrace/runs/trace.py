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
from PIL import Image
from tqdm import tqdm

from vistrace import __version__
from vistrace.adapters import PreparedPrompt
from vistrace.hook.plan import KnockoutMode
from vistrace.images import ImageError, open_image, resolve_image
from vistrace.knockout.lens import answer_probability_by_layer
from vistrace.knockout.sweep import KnockoutResult, KnockoutRunner
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


class SampleError(ValueError):
    """A sample cannot be traced; the message says why."""


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


def answer_token_ids(loaded: LoadedModel, sample: dict[str, Any]) -> list[int]:
    """The tokens to score: `answer_tokens` (a list of in-vocabulary ids, never coerced), or
    `answer` text tokenized without special tokens; EOS removed. SampleError says what is wrong."""
    tokenizer = loaded.processor.tokenizer
    if sample.get("answer_tokens") is not None:
        tokens = sample["answer_tokens"]
        if not isinstance(tokens, list):
            raise SampleError(f"`answer_tokens` must be a list of token ids, not {type(tokens).__name__}")
        vocab = _vocab_size(loaded)
        for token in tokens:
            if not isinstance(token, int) or isinstance(token, bool):
                raise SampleError(f"`answer_tokens` holds {token!r}; token ids are non-negative integers")
            if token < 0 or (vocab is not None and token >= vocab):
                raise SampleError(f"`answer_tokens` holds {token}, outside the vocabulary (0 … {vocab})")
        tokens = list(tokens)
    elif isinstance(sample.get("answer"), str):
        tokens = list(tokenizer(sample["answer"], add_special_tokens=False)["input_ids"])
    elif sample.get("answer") is not None:
        raise SampleError(f"`answer` must be text, not {type(sample['answer']).__name__}")
    else:
        raise SampleError("no `answer_tokens` and no `answer` text")
    # The tokenizer's EOS too, when the generation config names others.
    eos_ids = loaded.eos_ids | {tokenizer.eos_token_id}
    tokens = [t for t in tokens if t not in eos_ids]
    if not tokens:
        raise SampleError("the answer has no tokens to score once EOS is removed")
    return tokens


def _vocab_size(loaded: LoadedModel) -> int | None:
    """Rows of the output embedding (the ids the model can score), when known."""
    output = loaded.model.get_output_embeddings()
    if output is not None and hasattr(output, "weight"):
        return int(output.weight.shape[0])
    value = getattr(loaded.model.config.get_text_config(), "vocab_size", None)
    return int(value) if value else None


def special_token_problem(loaded: LoadedModel, prompt: str) -> str | None:
    """Why `prompt` cannot be used as it is: it spells one of the tokenizer's special tokens (an
    image placeholder such as `<image>` would add an image)."""
    tokenizer = loaded.processor.tokenizer
    specials = {str(t) for t in getattr(tokenizer, "all_special_tokens", [])}
    specials |= {str(t) for t in getattr(tokenizer, "added_tokens_encoder", {})}
    for name in ("image_token", "video_token", "boi_token", "eoi_token"):
        value = getattr(loaded.processor, name, None) or getattr(tokenizer, name, None)
        if isinstance(value, str):
            specials.add(value)
    found = sorted(t for t in specials if t and t in prompt)
    if found:
        return f"the prompt contains the special token(s) {', '.join(found)}, which would change the input"
    return None


def _open_image(path_text: str, data_file: Path, images_dir: str | Path | None) -> Image.Image:
    """The sample's image as RGB (:func:`vistrace.images.open_image`); a relative path is resolved
    against `images_dir`, else the data file's folder."""
    try:
        return open_image(resolve_image(path_text, data_file, images_dir))
    except ImageError as error:
        raise SampleError(str(error)) from None


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
        bar = tqdm(mine, desc=f"trace {config.mode}{shard.label}", unit="sample", position=shard.rank)

        def skip(item: _Pending | tuple[int, int, str], reason: str) -> None:
            position, number, sample_id = item if isinstance(item, tuple) else item.where
            log.warning("%s: line %d, sample %s skipped: %s", config.data, number, sample_id, reason)
            skipped_store.append([{"id": sample_id, "line": number, POSITION: position, "reason": reason}])
            counts["skipped"] += 1

        def to_sweep() -> Iterator[tuple[_Pending, PreparedPrompt, list[int]]]:
            for position, (number, sample, error) in bar:
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
                    continue
                try:
                    if error is not None or sample is None:
                        raise SampleError(error or "empty record")
                    prepared, answer = _sample_input(loaded, sample, config)
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
            records = _records(loaded, runner, item.sample, sample_id, config, outcome.results)
            if layer_store is not None:  # before the results it goes with
                lens = answer_probability_by_layer(
                    loaded, item.prepared, item.answer, temperature=runner.temperature
                )
                layer_store.append([{"id": sample_id, POSITION: position, "layer_probs": lens.tolist()}])
            results.append([{**record, POSITION: position} for record in records])
            counts["traced"] += 1
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


def _sample_input(
    loaded: LoadedModel, sample: dict[str, Any], config: TraceConfig
) -> tuple[PreparedPrompt, list[int]]:
    """The processed prompt and the answer tokens of one sample; SampleError when it cannot be run."""
    for field in ("image", "prompt"):
        if not isinstance(sample.get(field), str) or not sample[field].strip():
            raise SampleError(f"missing or empty `{field}`")
    for field in ("category", "dataset"):
        if sample.get(field) is not None and not isinstance(sample[field], str):
            raise SampleError(f"`{field}` must be text, not {type(sample[field]).__name__}")
    categories = sample.get("categories")
    if categories is not None and not (
        isinstance(categories, list) and all(isinstance(c, str) for c in categories)
    ):
        raise SampleError("`categories` must be a list of text")
    problem = special_token_problem(loaded, sample["prompt"])
    if problem:
        raise SampleError(problem)
    image = _open_image(sample["image"], config.data, config.images)
    answer = answer_token_ids(loaded, sample)
    try:
        prepared = loaded.adapter.prepare(loaded.model, loaded.processor, image, sample["prompt"])
    except ValueError as error:
        raise SampleError(f"the processor refused the sample ({' '.join(str(error).split())})") from None
    length = prepared.input_ids.shape[1] + len(answer)
    context = loaded.context_length
    if context is not None and length > context:
        raise SampleError(f"prompt + answer is {length} tokens, the model's context is {context}")
    return prepared, answer


def _records(
    loaded: LoadedModel,
    runner: KnockoutRunner,
    sample: dict[str, Any],
    sample_id: str,
    config: TraceConfig,
    swept: dict[int, KnockoutResult],
) -> list[dict[str, Any]]:
    """The result records of one swept sample: one per pathway and k."""
    parsed = config.parsed_pathways
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
