"""`vistrace trace`: knockout sweeps over a JSONL file of samples, resumable, one record per
(sample, pathway, k, mode, temperature, model)."""

from __future__ import annotations

import json
import logging
import platform
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import transformers
from PIL import Image, UnidentifiedImageError
from tqdm import tqdm

from vistrace import __version__
from vistrace.hook.plan import KnockoutMode
from vistrace.images import resolve_image, to_rgb
from vistrace.knockout import KnockoutRunner, Pathway
from vistrace.loading import LoadedModel
from vistrace.store import JsonlStore

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
    """(line number, record or None, error or None) for every non-empty line."""
    rows: list[tuple[int, dict[str, Any] | None, str | None]] = []
    with data_file.open(encoding="utf-8") as handle:
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
            rows.append((number, record, None))
    return rows


def answer_token_ids(loaded: LoadedModel, sample: dict[str, Any]) -> list[int]:
    """The tokens to score: `answer_tokens`, or `answer` tokenized without special tokens; EOS removed."""
    tokenizer = loaded.processor.tokenizer
    if sample.get("answer_tokens") is not None:
        tokens = [int(t) for t in sample["answer_tokens"]]
    elif isinstance(sample.get("answer"), str):
        tokens = list(tokenizer(sample["answer"], add_special_tokens=False)["input_ids"])
    else:
        raise SampleError("no `answer_tokens` and no `answer` text")
    eos = loaded.model.generation_config.eos_token_id
    eos_ids = set(eos if isinstance(eos, list) else [eos]) | {tokenizer.eos_token_id}
    tokens = [t for t in tokens if t not in eos_ids]
    if not tokens:
        raise SampleError("the answer has no tokens to score once EOS is removed")
    return tokens


def _open_image(path_text: str, data_file: Path, images_dir: str | Path | None) -> Image.Image:
    """The sample's image as RGB (:func:`vistrace.images.to_rgb`); a relative path is resolved against
    `images_dir`, else the data file's folder."""
    path = resolve_image(path_text, data_file, images_dir)
    try:
        with Image.open(path) as image:
            image.load()
            return to_rgb(image)
    except FileNotFoundError:
        raise SampleError(f"image not found: {path}") from None
    except (UnidentifiedImageError, OSError) as error:
        raise SampleError(f"image unreadable: {path} ({error})") from None


def _versions() -> dict[str, str]:
    return {
        "vistrace": __version__,
        "transformers": transformers.__version__,
        "torch": torch.__version__,
        "python": platform.python_version(),
    }


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
    A relative `image` is resolved against `images_dir`, else the folder of `data_file`."""
    data_path = Path(data_file)
    out = Path(out_dir)
    parsed = [Pathway.parse(name) for name in pathways]
    runner = KnockoutRunner(loaded, mode=mode, temperature=temperature)
    results = JsonlStore(out / "results.jsonl", RESULT_KEY)
    skipped_store = JsonlStore(out / "skipped.jsonl", ("id", "reason"))
    model_name = str(loaded.path)
    rows = _load_samples(data_path)[: limit if limit is not None else None]
    counts = {"traced": 0, "resumed": 0, "skipped": 0}
    max_positions = getattr(loaded.model.config.get_text_config(), "max_position_embeddings", None)
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
        if all(results.done(key) for key in keys):
            counts["resumed"] += 1
            continue
        try:
            if error is not None or sample is None:
                raise SampleError(error or "empty record")
            for field in ("image", "prompt"):
                if not isinstance(sample.get(field), str) or not sample[field].strip():
                    raise SampleError(f"missing or empty `{field}`")
            image = _open_image(sample["image"], data_path, images_dir)
            answer = answer_token_ids(loaded, sample)
            prepared = loaded.adapter.prepare(loaded.model, loaded.processor, image, sample["prompt"])
            length = prepared.input_ids.shape[1] + len(answer)
            if max_positions is not None and length > max_positions:
                raise SampleError(
                    f"prompt + answer is {length} tokens, the model's context is {max_positions}"
                )
            records = []
            for k in ks:
                result = runner.run(prepared, answer, parsed, k, strategy)
                for pathway in parsed:
                    records.append(
                        {
                            "id": sample_id,
                            "pathway": pathway.name,
                            "k": k,
                            "mode": mode,
                            "temperature": runner.temperature,
                            "model": model_name,
                            "strategy": strategy,
                            "p_full": result.p_full,
                            "probs": result.probs[pathway.name],
                            "answer_tokens": list(result.answer_tokens),
                            "category": sample.get("category"),
                            "categories": sample.get("categories"),
                            "dataset": sample.get("dataset"),
                            "n_layers": runner.n_layers,
                            "cross_layers": sorted(runner.cross),
                            "versions": _versions(),
                        }
                    )
            results.append(records)
            counts["traced"] += 1
        except SampleError as problem:
            log.warning("%s: sample %s skipped: %s", data_path, sample_id, problem)
            skipped_store.append([{"id": sample_id, "line": number, "reason": str(problem)}])
            counts["skipped"] += 1
    return TraceSummary(len(rows), counts["traced"], counts["resumed"], counts["skipped"], len(results), out)


def export_results(run_dir: str | Path, out_file: str | Path, fmt: str) -> Path:
    """One row per (id, pathway, k, mode) with `p_full`, `probs` (per centre layer), category and
    categories (CSV: joined with `|`)."""
    from vistrace.store import read_records

    rows: list[dict[str, Any]] = [
        {
            key: r.get(key)
            for key in (
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
        }
        for r in read_records(Path(run_dir) / "results.jsonl")
    ]
    target = Path(out_file)
    target.parent.mkdir(parents=True, exist_ok=True)
    if fmt == "jsonl":
        target.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    elif fmt == "csv":
        import csv

        with target.open("w", newline="", encoding="utf-8") as handle:
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
    elif fmt == "parquet":
        try:
            import pyarrow as pa
            import pyarrow.parquet as pq
        except ImportError:
            raise RuntimeError("parquet export needs pyarrow: pip install pyarrow") from None
        pq.write_table(pa.Table.from_pylist(rows), target)
    else:
        raise ValueError(f"unknown format {fmt!r}; choose jsonl, csv or parquet")
    return target
