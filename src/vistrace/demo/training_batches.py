"""Training examples of the demo models: (image, prompt, target) encoded exactly as `Adapter.prepare`
builds inputs, collated into right-padded batches, drawn as seeded batches from the shapes world."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from PIL import Image
from transformers import MllamaProcessor

from vistrace.adapters import Adapter
from vistrace.data.prompts import vqav2_prompt
from vistrace.demo.training_config import TrainConfig
from vistrace.demo.volcano_data import volcano_turns
from vistrace.demo.world import QUESTION_KINDS, Sample, make_split, render
from vistrace.roles import render_prompt

IGNORE_INDEX = -100
IMAGE_KEYS = ("pixel_values", "aspect_ratio_ids", "aspect_ratio_mask")


def image_tensors(processor: Any, images: Sequence[Image.Image]) -> dict[str, torch.Tensor]:
    """The image-side tensors the processor makes for ``images`` (one image per example)."""
    batch: Any = [[image] for image in images] if isinstance(processor, MllamaProcessor) else list(images)
    outputs = processor.image_processor(images=batch, return_tensors="pt")
    return {k: v for k, v in outputs.items() if k in IMAGE_KEYS}


@dataclass(frozen=True)
class Example:
    """One supervised turn: processor inputs of the prompt (batch 1) and the target token ids."""

    inputs: dict[str, torch.Tensor]
    target_ids: list[int]


class Encoder:
    """Turns (image, prompt, target) into an `Example` exactly as `Adapter.prepare` builds inputs.

    The text-side tensors are cached per (prompt, image size), the set of prompts being finite.
    """

    def __init__(self, processor: Any, adapter: Adapter) -> None:
        self.processor = processor
        self.adapter = adapter
        self._text: dict[tuple[str, tuple[int, int]], dict[str, torch.Tensor]] = {}
        self._targets: dict[str, list[int]] = {}

    def target_ids(self, target: str) -> list[int]:
        """Token ids of ``target`` as the model should generate it, end-of-turn token included."""
        if target not in self._targets:
            tokenizer = self.processor.tokenizer
            ids = tokenizer(target, add_special_tokens=False)["input_ids"]
            self._targets[target] = [*ids, int(tokenizer.eos_token_id)]
        return self._targets[target]

    def encode(self, image: Image.Image, prompt: str, target: str) -> Example:
        image = self.adapter.prepare_image(self.processor, image)
        key = (prompt, image.size)
        if key in self._text:
            return Example(
                {**self._text[key], **image_tensors(self.processor, [image])}, self.target_ids(target)
            )
        rendered = render_prompt(self.processor, prompt)
        outputs = self.processor(
            images=image,
            text=rendered.text,
            add_special_tokens=rendered.add_special_tokens,
            return_tensors="pt",
        )
        inputs = {k: v for k, v in outputs.items() if isinstance(v, torch.Tensor)}
        self._text[key] = {k: v for k, v in inputs.items() if k not in IMAGE_KEYS}
        return Example(inputs, self.target_ids(target))


def collate(examples: Sequence[Example], pad_id: int) -> tuple[dict[str, torch.Tensor], torch.Tensor]:
    """Right-padded model inputs of prompt + target, and labels that cover the targets only.

    A cross-attention mask grows over the target as generation grows it: by repeating its last row.
    """
    lengths = [ex.inputs["input_ids"].shape[1] + len(ex.target_ids) for ex in examples]
    width = max(lengths)
    ids = torch.full((len(examples), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(examples), width), dtype=torch.long)
    labels = torch.full((len(examples), width), IGNORE_INDEX, dtype=torch.long)
    cross: list[torch.Tensor] = []
    for row, (ex, length) in enumerate(zip(examples, lengths, strict=True)):
        prompt = ex.inputs["input_ids"][0]
        target = torch.tensor(ex.target_ids, dtype=torch.long)
        ids[row, :length] = torch.cat([prompt, target])
        mask[row, :length] = 1
        labels[row, prompt.shape[0] : length] = target
        if "cross_attention_mask" in ex.inputs:
            rows = ex.inputs["cross_attention_mask"][0]
            padded = torch.zeros((width, *rows.shape[1:]), dtype=rows.dtype)
            padded[:length] = torch.cat([rows, rows[-1:].expand(len(target), *rows.shape[1:])])
            cross.append(padded)
    batch = {"input_ids": ids, "attention_mask": mask}
    for key in IMAGE_KEYS:
        if key in examples[0].inputs:
            batch[key] = torch.cat([ex.inputs[key] for ex in examples])
    if cross:
        batch["cross_attention_mask"] = torch.stack(cross)
    return batch, labels


class ExampleStream:
    """Seeded batches drawn from a fixed training split (every question kind asked of every scene).

    A question kind is drawn with probability proportional to its weight in ``kind_weights``, then a
    sample of that kind; a plain question is wrapped in the paper's VQAv2 prompt (what `vistrace
    eval` asks) with probability ``vqa_prompt_fraction``. From step ``volcano_start`` on, with
    probability ``volcano_fraction``, the example is one of the sample's Volcano turns (feedback,
    revision, decision, contrast decision, in proportion to ``volcano_turn_weights``), otherwise
    the plain question.
    """

    def __init__(self, config: TrainConfig, encoder: Encoder) -> None:
        self.config = config
        self.encoder = encoder
        samples = make_split(config.train_scenes, config.seed, questions_per_scene=len(QUESTION_KINDS))
        weights = dict(config.kind_weights)
        self.by_kind = {kind: [s for s in samples if s.qa.question_kind == kind] for kind in QUESTION_KINDS}
        self.kinds = [kind for kind in QUESTION_KINDS if weights.get(kind, 0.0) > 0 and self.by_kind[kind]]
        total = sum(weights[kind] for kind in self.kinds)
        self.p = [weights[kind] / total for kind in self.kinds]
        self.rng = np.random.default_rng([config.seed, 1])

    def _turn(self, sample: Sample, volcano: bool) -> tuple[str, str]:
        if not volcano or self.rng.random() >= self.config.volcano_fraction:
            wrapped = self.rng.random() < self.config.vqa_prompt_fraction
            return (vqav2_prompt(sample.qa.question) if wrapped else sample.qa.question), sample.qa.answer
        turns = volcano_turns(sample, self.rng, p_wrong=self.config.p_wrong, contrast_decision=True)
        weights = np.array(self.config.volcano_turn_weights)
        turn = turns[1 + int(self.rng.choice(len(weights), p=weights / weights.sum()))]
        return turn.prompt, turn.target

    def sample(self) -> Sample:
        """The next training sample."""
        pool = self.by_kind[self.kinds[int(self.rng.choice(len(self.kinds), p=self.p))]]
        return pool[int(self.rng.integers(len(pool)))]

    def batch(self, step: int) -> list[Example]:
        """The examples of training step ``step`` (Volcano turns only from ``volcano_start`` on)."""
        examples = []
        for _ in range(self.config.batch_size):
            sample = self.sample()
            prompt, target = self._turn(sample, step >= self.config.volcano_start)
            examples.append(self.encoder.encode(render(sample.scene), prompt, target))
        return examples
