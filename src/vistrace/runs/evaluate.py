"""Run a model over a dataset: the paper's prompts, greedy batched generation, resumable predictions.

:func:`evaluate` writes into one run folder:

- ``config.json``: the run settings; a later call with other settings refuses to resume;
- ``predictions.jsonl``: one JSON object per answered example, appended and synced batch by batch;
- ``skipped.jsonl``: one JSON object per example that could not be run in the latest call, and
  per record the dataset reader could not turn into an example (``unreadable``).

Examples whose id is already in ``predictions.jsonl`` are not run again.
"""

from __future__ import annotations

import copy
import json
import logging
import os
import re
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import IO, Any

import torch
from PIL import Image
from tqdm.auto import tqdm

from vistrace import __version__
from vistrace.data import (
    DEFAULT_MAX_NEW_TOKENS,
    DatasetError,
    Example,
    Skipped,
    example_prompt,
    load_image,
)
from vistrace.models.loading import LoadedModel
from vistrace.roles import Prompt, render_prompt
from vistrace.runs.folder import ConfigMismatchError, open_run, read_jsonl, repair_tail
from vistrace.runs.trace import special_token_problem

__all__ = ["ConfigMismatchError", "EvalSummary", "build_prompt", "evaluate", "read_jsonl", "run_config"]

logger = logging.getLogger(__name__)

PREDICTIONS_FILE = "predictions.jsonl"
SKIPPED_FILE = "skipped.jsonl"
CONFIG_FILE = "config.json"
PAPER_DATASETS: tuple[str, ...] = ("vqav2", "visual7w", "docvqa")
GENERIC_DATASETS: tuple[str, ...] = ("jsonl", "json", "hf", "mmhal")
DATASETS: tuple[str, ...] = PAPER_DATASETS + GENERIC_DATASETS
GENERIC_MAX_NEW_TOKENS = 512


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


@dataclass
class _Item:
    """One example ready for the processor: its prompt, options and prepared image."""

    example: Example
    user_text: str
    options: list[str] | None
    prompt: Prompt
    image: Image.Image
    image_path: Path


class _Skip(Exception):
    """An example that cannot be run; the message is the one-line reason."""


def build_prompt(example: Example, dataset: str, seed: int = 42) -> tuple[str, list[str] | None]:
    """(user text, options) of one example: the paper's prompt, or the question as is for generic data.

    Visual7W options are ``shuffle_options(example.choices, seed, example.id)``; other datasets
    have no options.
    """
    if dataset not in DATASETS:
        raise ValueError(f"unknown dataset {dataset!r}; expected one of {', '.join(DATASETS)}")
    if dataset in GENERIC_DATASETS:
        return example.question, None
    return example_prompt(replace(example, dataset=dataset), seed)


def run_config(
    loaded: LoadedModel, *, dataset: str, seed: int, batch_size: int, max_new_tokens: int
) -> dict[str, Any]:
    """The settings recorded in ``config.json``; a resumed run must have the same ones."""
    import transformers

    dtype = str(getattr(loaded.model, "dtype", "")).removeprefix("torch.")
    return {
        "model": str(Path(loaded.path).resolve()),
        "model_type": loaded.adapter.model_type,
        "dtype": dtype,
        "dataset": dataset,
        "seed": seed,
        "batch_size": batch_size,
        "max_new_tokens": max_new_tokens,
        "greedy": True,
        "versions": {
            "transformers": transformers.__version__,
            "torch": torch.__version__,
            "vistrace": __version__,
        },
    }


def _one_line(text: str) -> str:
    return " ".join(str(text).split())


def _image_file(example: Example, out_dir: Path) -> Path:
    """The absolute path of the example's image; embedded images are saved under ``out_dir/images``."""
    if example.image_bytes is None:
        return example.image.resolve()
    safe = re.sub(r"[^A-Za-z0-9._-]", "_", example.id)
    target = (out_dir / "images" / f"{safe}{example.image.suffix or '.png'}").resolve()
    if not target.is_file():
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_bytes(example.image_bytes)
    return target


def _context_length(model: Any) -> int | None:
    """The decoder's maximum number of positions, when the config gives one."""
    config = model.config
    text = getattr(config, "text_config", None) or config
    value = getattr(text, "max_position_embeddings", None)
    return int(value) if value else None


def _eos_ids(model: Any, tokenizer: Any) -> set[int]:
    """Every id that ends generation (the generation config's, else the tokenizer's)."""
    eos = model.generation_config.eos_token_id
    if eos is None:
        eos = tokenizer.eos_token_id
    if eos is None:
        return set()
    return {int(e) for e in eos} if isinstance(eos, (list, tuple)) else {int(eos)}


class _Runner:
    """Prepares, encodes and generates batches for one loaded model (greedy, left padding)."""

    def __init__(self, loaded: LoadedModel, dataset: str, seed: int, max_new_tokens: int, out_dir: Path):
        self.loaded = loaded
        self.processor = loaded.processor
        self.tokenizer = loaded.processor.tokenizer
        self.dataset = dataset
        self.seed = seed
        self.out_dir = out_dir
        self.context = _context_length(loaded.model)
        self.eos = _eos_ids(loaded.model, self.tokenizer)
        gen = copy.deepcopy(loaded.model.generation_config)
        gen.update(do_sample=False, num_beams=1, temperature=None, top_p=None, top_k=None, max_length=None)
        gen.max_new_tokens = max_new_tokens
        if gen.pad_token_id is None:
            gen.pad_token_id = self.tokenizer.pad_token_id
        if gen.pad_token_id is None and self.eos:
            gen.pad_token_id = min(self.eos)
        self.generation_config = gen

    def prepare(self, example: Example) -> _Item:
        """The example's prompt and image; :class:`_Skip` when the example cannot be run."""
        if not example.question.strip():
            raise _Skip("empty question")
        problem = special_token_problem(self.loaded, example.question)
        if problem:
            raise _Skip(problem.replace("the prompt", "the question", 1))
        try:
            user_text, options = build_prompt(example, self.dataset, self.seed)
        except ValueError as exc:
            raise _Skip(str(exc)) from exc
        try:
            image = load_image(example)
            image_path = _image_file(example, self.out_dir)
        except (DatasetError, OSError) as exc:
            raise _Skip(str(exc)) from exc
        prompt = render_prompt(self.processor, user_text)
        prepared = self.loaded.adapter.prepare_image(self.processor, image)
        return _Item(example, user_text, options, prompt, prepared, image_path)

    def encode(self, items: Sequence[_Item]) -> dict[str, torch.Tensor]:
        """Processor output for the batch (left padded), on the model's device and dtype."""
        flags = {item.prompt.add_special_tokens for item in items}
        if len(flags) != 1:
            raise ValueError("prompts of one batch disagree on adding special tokens")
        inputs = self.processor(
            images=[[item.image] for item in items],
            text=[item.prompt.text for item in items],
            add_special_tokens=flags.pop(),
            padding=True,
            return_tensors="pt",
        )
        device, dtype = self.loaded.device, self.loaded.model.dtype
        return {
            key: value.to(device, dtype) if value.is_floating_point() else value.to(device)
            for key, value in inputs.items()
            if isinstance(value, torch.Tensor)
        }

    def encode_checked(
        self, items: list[_Item]
    ) -> tuple[dict[str, torch.Tensor] | None, list[_Item], dict[str, str]]:
        """Encode the batch, dropping items the processor refuses or whose prompt exceeds the context.

        Returns (inputs or None when nothing is left, kept items, {example id: skip reason}).
        """
        skips: dict[str, str] = {}
        try:
            inputs = self.encode(items)
        except Exception:
            kept = []
            for item in items:
                try:
                    self.encode([item])
                    kept.append(item)
                except Exception as exc:
                    skips[item.example.id] = f"the processor failed: {_one_line(str(exc))}"
            items = kept
            if not items:
                return None, [], skips
            inputs = self.encode(items)
        if self.context is not None:
            lengths = inputs["attention_mask"].sum(dim=1).tolist()
            too_long = {i for i, n in enumerate(lengths) if n > self.context}
            for i in sorted(too_long):
                skips[items[i].example.id] = (
                    f"prompt of {lengths[i]} tokens is longer than the model's context of {self.context}"
                )
            if too_long:
                items = [item for i, item in enumerate(items) if i not in too_long]
                if not items:
                    return None, [], skips
                inputs = self.encode(items)
        return inputs, items, skips

    def generate(self, items: list[_Item]) -> tuple[list[dict[str, Any]], dict[str, str]]:
        """Prediction records of the batch and the skip reasons of items dropped before generation."""
        inputs, items, skips = self.encode_checked(items)
        if inputs is None:
            return [], skips
        with torch.inference_mode():
            output = self.loaded.model.generate(**inputs, generation_config=self.generation_config)
        width = inputs["input_ids"].shape[1]
        lengths = inputs["attention_mask"].sum(dim=1).tolist()
        records = []
        for item, row, length in zip(items, output[:, width:].tolist(), lengths, strict=True):
            ids, reason = self._answer_ids(row, int(length))
            records.append(self._record(item, ids, reason))
        return records, skips

    def _answer_ids(self, row: list[int], prompt_length: int) -> tuple[list[int], str]:
        """Generated ids up to (without) the first EOS, and why generation stopped."""
        cut = next((i for i, token in enumerate(row) if token in self.eos), None)
        ids, reason = (row, "max_new_tokens") if cut is None else (row[:cut], "eos")
        if self.context is not None and len(ids) > self.context - prompt_length + 1:
            ids, reason = ids[: self.context - prompt_length + 1], "context"
        return ids, reason

    def _record(self, item: _Item, ids: list[int], finish_reason: str) -> dict[str, Any]:
        """One line of ``predictions.jsonl``."""
        example = item.example
        prediction = self.tokenizer.decode(ids, skip_special_tokens=True).strip()
        record: dict[str, Any] = {
            "id": example.id,
            "dataset": self.dataset,
            "image": str(item.image_path),
            "question": example.question,
            "prompt": item.user_text,
            "prompt_text": item.prompt.text,
            "options": item.options,
            "prediction": prediction,
            "generated_ids": ids,
            "finish_reason": finish_reason,
            "answers": list(example.answers),
            "category": example.category,
            "categories": list(example.categories),
        }
        for key, value in example.extra.items():
            record.setdefault(key, value)
        return record


def _write_lines(handle: IO[str], records: Iterable[dict[str, Any]]) -> None:
    """Append JSON lines, then flush and fsync so that a crash loses no finished line."""
    for record in records:
        handle.write(json.dumps(record, ensure_ascii=False, default=str) + "\n")
    handle.flush()
    os.fsync(handle.fileno())


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
    """Answer ``examples`` (the first ``limit`` of them) with greedy generation into ``out_dir``.

    ``dataset`` picks the prompt: the paper's for ``vqav2``, ``visual7w`` (options shuffled with
    ``seed``) and ``docvqa``; the question as is for ``jsonl``, ``json``, ``hf`` and ``mmhal``.
    The user message is the image then the prompt, through the model's chat template; batches of
    ``batch_size`` are left padded. ``max_new_tokens`` defaults to 25 (VQAv2, Visual7W), 512
    (DocVQA and generic data). Examples already in ``out_dir/predictions.jsonl`` are skipped;
    ``ConfigMismatchError`` when ``out_dir/config.json`` holds other settings. Bad examples go to
    ``skipped.jsonl`` with a reason and a logged warning; the run goes on. ``unreadable``: the
    records the reader skipped (``ReadResult.skipped``), written to ``skipped.jsonl`` and counted
    as skipped so that the file and the summary account for every record of the dataset.
    ``source``: the dataset file, recorded in ``config.json`` so that a resume on another file is
    refused. The folder is locked while the run writes (:func:`vistrace.runs.folder.open_run`).
    """
    if dataset not in DATASETS:
        raise ValueError(f"unknown dataset {dataset!r}; expected one of {', '.join(DATASETS)}")
    if batch_size < 1:
        raise ValueError(f"batch_size must be at least 1, got {batch_size}")
    if max_new_tokens is not None and max_new_tokens < 1:
        raise ValueError(f"max_new_tokens must be at least 1, got {max_new_tokens}")
    new_tokens = max_new_tokens or DEFAULT_MAX_NEW_TOKENS.get(dataset, GENERIC_MAX_NEW_TOKENS)
    if limit is not None and limit < 0:
        raise ValueError(f"--limit {limit}: must be 0 or more")
    config = run_config(loaded, dataset=dataset, seed=seed, batch_size=batch_size, max_new_tokens=new_tokens)
    if source is not None:
        config["input"] = str(Path(source).resolve())
    with open_run(out_dir, "eval", config) as out:
        return _evaluate(loaded, examples, out, dataset, batch_size, new_tokens, seed, limit, unreadable)


def _evaluate(
    loaded: LoadedModel,
    examples: Iterable[Example],
    out: Path,
    dataset: str,
    batch_size: int,
    new_tokens: int,
    seed: int,
    limit: int | None,
    unreadable: Iterable[Skipped],
) -> EvalSummary:
    """The generation loop of :func:`evaluate` in the locked run folder `out`."""
    config_file, predictions, skipped_file = out / CONFIG_FILE, out / PREDICTIONS_FILE, out / SKIPPED_FILE
    repair_tail(predictions)
    finished = {str(record["id"]) for record in read_jsonl(predictions)}

    chosen = list(examples)
    if limit is not None:
        chosen = chosen[:limit]
    resumed = len({example.id for example in chosen if example.id in finished})
    runner = _Runner(loaded, dataset, seed, new_tokens, out)
    tokenizer = runner.tokenizer
    side = tokenizer.padding_side
    generated = skipped = 0
    started = time.perf_counter()
    tokenizer.padding_side = "left"
    todo: list[Example] = []
    duplicates: list[dict[str, Any]] = []
    seen: dict[str, int] = {}
    for position, example in enumerate(chosen, start=1):
        if example.id in seen:
            reason = f"duplicate id, examples {seen[example.id]} and {position} of the dataset"
            duplicates.append(_skip_record(example, reason))
            continue
        seen[example.id] = position
        if example.id not in finished:
            todo.append(example)
    try:
        with (
            predictions.open("a", encoding="utf-8") as pred_handle,
            skipped_file.open("w", encoding="utf-8") as skip_handle,
            tqdm(total=len(todo), unit="sample", desc=f"eval {dataset}") as bar,
        ):
            unread = [{"id": s.id, "source": s.source, "reason": _one_line(s.reason)} for s in unreadable]
            _write_lines(skip_handle, [*unread, *duplicates])
            skipped = len(unread) + len(duplicates)
            for start in range(0, len(todo), batch_size):
                batch = todo[start : start + batch_size]
                skips: list[dict[str, Any]] = []
                items = []
                for example in batch:
                    try:
                        items.append(runner.prepare(example))
                    except _Skip as exc:
                        skips.append(_skip_record(example, str(exc)))
                records, reasons = runner.generate(items) if items else ([], {})
                by_id = {example.id: example for example in batch}
                skips.extend(_skip_record(by_id[key], reason) for key, reason in reasons.items())
                _write_lines(pred_handle, records)
                _write_lines(skip_handle, skips)
                generated += len(records)
                skipped += len(skips)
                bar.update(len(batch))
                bar.set_postfix(skipped=skipped)
    finally:
        tokenizer.padding_side = side
    seconds = time.perf_counter() - started
    return EvalSummary(
        out, predictions, skipped_file, config_file, len(chosen), resumed, generated, skipped, seconds
    )


def _skip_record(example: Example, reason: str) -> dict[str, Any]:
    """One line of ``skipped.jsonl``, logged as a warning."""
    line = _one_line(reason)
    logger.warning("skipped example %s: %s", example.id, line)
    return {"id": example.id, "image": str(example.image), "question": example.question, "reason": line}
