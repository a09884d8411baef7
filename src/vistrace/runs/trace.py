"""`vistrace trace`: knockout sweeps over a JSONL file of samples, resumable, one record per
(sample, pathway, k, mode, temperature, model)."""

from __future__ import annotations

import json
import logging
import math
import platform
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import transformers
from PIL import Image
from tqdm import tqdm

from vistrace import __version__
from vistrace.hook.plan import KnockoutMode
from vistrace.images import ImageError, open_image, resolve_image
from vistrace.knockout.sweep import KnockoutRunner, Pathway
from vistrace.models.loading import LoadedModel
from vistrace.runs.folder import check_writable_target, iter_jsonl, open_run, write_atomic
from vistrace.runs.store import JsonlStore

log = logging.getLogger(__name__)

RESULT_KEY = ("id", "pathway", "k", "mode", "temperature", "model")


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
    eos = loaded.model.generation_config.eos_token_id
    eos_ids = set(eos if isinstance(eos, list) else [eos]) | {tokenizer.eos_token_id}
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


def check_trace_options(
    pathways: Sequence[str],
    ks: Sequence[int],
    *,
    mode: str = "strict",
    strategy: str = "fast",
    temperature: float | None = None,
    limit: int | None = None,
    n_layers: int | None = None,
) -> list[Pathway]:
    """The parsed pathways; ValueError (one line naming the option) for settings that cannot work.

    The command line checks them before the model loads (`n_layers` None) and again with the
    model's layer count; :func:`trace` itself accepts a window wider than the model (clipped at the
    edges, :func:`vistrace.knockout.sweep.window_layers`)."""
    if mode not in ("strict", "paper"):
        raise ValueError(f"--mode {mode!r}: choose strict or paper")
    if strategy not in ("fast", "naive"):
        raise ValueError(f"--strategy {strategy!r}: choose fast or naive")
    if not pathways:
        raise ValueError("--pathways is empty: name at least one, e.g. image_to_last")
    parsed = []
    for name in pathways:
        try:
            parsed.append(Pathway.parse(name))
        except ValueError as error:
            raise ValueError(f"--pathways: {error}") from None
    names = [p.name for p in parsed]
    if len(set(names)) != len(names):
        raise ValueError(f"--pathways names {sorted({n for n in names if names.count(n) > 1})} twice")
    if not ks:
        raise ValueError("--k is empty: give a window size such as 9")
    for k in ks:
        if not isinstance(k, int) or isinstance(k, bool) or k < 1 or k % 2 == 0:
            raise ValueError(f"--k {k!r}: a window size is a positive odd integer (1, 3, 9 …)")
        if n_layers is not None and k > n_layers:
            raise ValueError(f"--k {k}: larger than the model's {n_layers} layers")
    if len(set(ks)) != len(ks):
        raise ValueError(f"--k repeats a value: {list(ks)}")
    if temperature is not None and not (temperature > 0 and math.isfinite(temperature)):
        raise ValueError(f"--temperature {temperature}: must be a positive number")
    if limit is not None and limit < 0:
        raise ValueError(f"--limit {limit}: must be 0 or more")
    return parsed


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
) -> TraceSummary:
    """Run the sweep for every sample of `data_file`; results go to `out_dir/results.jsonl`,
    failures to `out_dir/skipped.jsonl`. Finished (sample, pathway, k) records are not redone.
    A relative `image` is resolved against `images_dir`, else the folder of `data_file`.

    The run folder (:func:`vistrace.runs.folder.open_run`) records the model, dtype, mode, temperature and
    data file in `config.json`; a resume with other ones is refused, as is a second process."""
    data_path = Path(data_file)
    parsed = check_trace_options(
        pathways, ks, mode=mode, strategy=strategy, temperature=temperature, limit=limit
    )
    runner = KnockoutRunner(loaded, mode=mode, temperature=temperature)
    rows = _load_samples(data_path)[: limit if limit is not None else None]
    model_name = str(loaded.path)
    config = {
        "model": str(Path(loaded.path).resolve()),
        "dtype": str(getattr(loaded.model, "dtype", "")).removeprefix("torch."),
        "mode": mode,
        "temperature": runner.temperature,
        "data": str(data_path.resolve()),
        "images": None if images_dir is None else str(Path(images_dir).resolve()),
    }
    counts = {"traced": 0, "resumed": 0, "skipped": 0}
    max_positions = getattr(loaded.model.config.get_text_config(), "max_position_embeddings", None)
    with open_run(out_dir, "trace", config) as out:
        results = JsonlStore(out / "results.jsonl", RESULT_KEY)
        skipped_store = JsonlStore(out / "skipped.jsonl", ("id", "reason"))
        for number, sample, error in tqdm(rows, desc=f"trace {mode}", unit="sample"):
            sample_id = str(sample.get("id", f"line{number}")) if sample else f"line{number}"
            keys = [
                {
                    "id": sample_id,
                    "pathway": p.name,
                    "k": k,
                    "mode": mode,
                    "temperature": runner.temperature,
                    "model": model_name,
                }
                for k in ks
                for p in parsed
            ]
            if error is None and all(results.done(key) for key in keys):
                counts["resumed"] += 1
                continue
            try:
                if error is not None or sample is None:
                    raise SampleError(error or "empty record")
                records = _trace_sample(
                    loaded,
                    runner,
                    sample,
                    sample_id,
                    data_path,
                    images_dir,
                    parsed,
                    ks,
                    strategy,
                    max_positions,
                )
                results.append(records)
                counts["traced"] += 1
            except SampleError as problem:
                log.warning("%s: line %d, sample %s skipped: %s", data_path, number, sample_id, problem)
                skipped_store.append([{"id": sample_id, "line": number, "reason": str(problem)}])
                counts["skipped"] += 1
        total = len(results)
    return TraceSummary(
        len(rows), counts["traced"], counts["resumed"], counts["skipped"], total, Path(out_dir)
    )


def _trace_sample(
    loaded: LoadedModel,
    runner: KnockoutRunner,
    sample: dict[str, Any],
    sample_id: str,
    data_path: Path,
    images_dir: str | Path | None,
    parsed: list[Pathway],
    ks: Sequence[int],
    strategy: str,
    max_positions: int | None,
) -> list[dict[str, Any]]:
    """The result records of one sample (one per pathway and k); SampleError when it cannot be run."""
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
    image = _open_image(sample["image"], data_path, images_dir)
    answer = answer_token_ids(loaded, sample)
    try:
        prepared = loaded.adapter.prepare(loaded.model, loaded.processor, image, sample["prompt"])
    except ValueError as error:
        raise SampleError(f"the processor refused the sample ({' '.join(str(error).split())})") from None
    length = prepared.input_ids.shape[1] + len(answer)
    if max_positions is not None and length > max_positions:
        raise SampleError(f"prompt + answer is {length} tokens, the model's context is {max_positions}")
    model_name = str(loaded.path)
    records = []
    for k in ks:
        result = runner.run(prepared, answer, parsed, k, strategy)
        for pathway in parsed:
            records.append(
                {
                    "id": sample_id,
                    "pathway": pathway.name,
                    "k": k,
                    "mode": runner.mode,
                    "temperature": runner.temperature,
                    "model": model_name,
                    "strategy": strategy,
                    "p_full": result.p_full,
                    "probs": result.probs[pathway.name],
                    "answer_tokens": list(result.answer_tokens),
                    "category": sample.get("category"),
                    "categories": categories,
                    "dataset": sample.get("dataset"),
                    "n_layers": runner.n_layers,
                    "cross_layers": sorted(runner.cross),
                    "versions": _versions(),
                }
            )
    return records


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
