"""The batches of an evaluation: each example's prompt and image, encoded with left padding, answered
greedily, and written as a prediction record."""

from __future__ import annotations

import copy
import re
from collections.abc import Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import torch
from PIL import Image

from vistrace.data import DatasetError, Example, example_prompt, load_image
from vistrace.models.loading import LoadedModel
from vistrace.roles import Prompt, render_prompt
from vistrace.runs.config import PAPER_DATASETS, eval_datasets
from vistrace.runs.samples import special_token_problem

__all__ = ["BatchRunner", "Skip", "build_prompt", "one_line"]

# Datasets whose examples get a paper's prompt (FlowTracker's, FG-TRACER's); others the bare question.
PROMPTED_DATASETS: tuple[str, ...] = (*PAPER_DATASETS, "textvqa", "chartqa", "coco")


@dataclass
class _Item:
    """One example ready for the processor: its prompt, options and prepared image."""

    example: Example
    user_text: str
    options: list[str] | None
    prompt: Prompt
    image: Image.Image
    image_path: Path


class Skip(Exception):
    """An example that cannot be run; the message is the one-line reason."""


def build_prompt(example: Example, dataset: str, seed: int = 42) -> tuple[str, list[str] | None]:
    """(user text, options) of one example: the paper's prompt (VQAv2, Visual7W, DocVQA), or the
    question as it is for any other dataset.

    Visual7W options are ``shuffle_options(example.choices, seed, example.id)``; other datasets
    have no options.
    """
    known = eval_datasets()
    if dataset not in known:
        raise ValueError(f"unknown dataset {dataset!r}; expected one of {', '.join(known)}")
    if dataset not in PROMPTED_DATASETS:
        return example.question, None
    return example_prompt(replace(example, dataset=dataset), seed)


def one_line(text: str) -> str:
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


class BatchRunner:
    """Prepares, encodes and generates batches for one loaded model (greedy, left padding)."""

    def __init__(self, loaded: LoadedModel, dataset: str, seed: int, max_new_tokens: int, out_dir: Path):
        self.loaded = loaded
        self.processor = loaded.processor
        self.tokenizer = loaded.processor.tokenizer
        self.dataset = dataset
        self.seed = seed
        self.out_dir = out_dir
        self.context = loaded.context_length
        self.eos = loaded.eos_ids
        gen = copy.deepcopy(loaded.model.generation_config)
        gen.update(do_sample=False, num_beams=1, temperature=None, top_p=None, top_k=None, max_length=None)
        gen.max_new_tokens = max_new_tokens
        if gen.pad_token_id is None:
            gen.pad_token_id = self.tokenizer.pad_token_id
        if gen.pad_token_id is None and self.eos:
            gen.pad_token_id = min(self.eos)
        self.generation_config = gen

    def prepare(self, example: Example) -> _Item:
        """The example's prompt and image; :class:`Skip` when the example cannot be run."""
        if not example.question.strip():
            raise Skip("empty question")
        problem = special_token_problem(self.loaded, example.question)
        if problem:
            raise Skip(problem.replace("the prompt", "the question", 1))
        try:
            user_text, options = build_prompt(example, self.dataset, self.seed)
        except ValueError as exc:
            raise Skip(str(exc)) from exc
        try:
            image = load_image(example)
            image_path = _image_file(example, self.out_dir)
        except (DatasetError, OSError) as exc:
            raise Skip(str(exc)) from exc
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
        return self.loaded.to_model(inputs)

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
                    skips[item.example.id] = f"the processor failed: {one_line(str(exc))}"
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
        generated = self.loaded.generate(inputs, generation_config=self.generation_config)
        lengths = inputs["attention_mask"].sum(dim=1).tolist()
        records = []
        for item, row, length in zip(items, generated.tolist(), lengths, strict=True):
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
