"""Train the demo vision-language models on the synthetic shapes world.

``python -m vistrace.demo.train --family llava|mllama`` builds the family's demo model
(`vistrace.demo.models`), trains it in two stages and saves a float16 checkpoint with
``metrics.json`` into ``src/vistrace/demo/models/<family>/``:

1. vision: linear probes on the features the decoder receives teach the vision tower, at every
   patch, the kind and colour of the shape in its cell (the role a pretrained CLIP plays for LLaVA);
   the probes are then dropped and the tower frozen;
2. answers: AdamW on (image, question) -> answer over images of `vistrace.demo.world`, and for
   LLaVA also the Volcano feedback, revision and decision turns of `vistrace.demo.volcano_data`.
   Every example goes through the model's chat template (`render_prompt`) and processor exactly as
   `Adapter.prepare` does; the loss covers the answer tokens and the end-of-turn token only.

The model is then scored with greedy generation on a held-out split. Everything is seeded: the same
command on the same software and thread count gives the same weights.
"""

from __future__ import annotations

import argparse
import json
import math
import platform
import random
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch
import transformers
from PIL import Image
from tqdm.auto import tqdm
from transformers import MllamaProcessor

from vistrace import compat
from vistrace.adapters import Adapter, get_adapter
from vistrace.data.prompts import vqav2_prompt
from vistrace.demo.models import (
    EVAL_SEED,
    IMAGE_SIZE,
    PATCH_SIZE,
    Architecture,
    build_demo_model,
    build_demo_tokenizer,
    evaluate_answers,
    evaluate_volcano,
)
from vistrace.demo.volcano_data import volcano_turns
from vistrace.demo.world import COLOURS, KINDS, POSITIONS, QUESTION_KINDS, Sample, make_split, render
from vistrace.models.builtin import DEMO_FAMILIES, DemoFamily, package_model_dir
from vistrace.roles import render_prompt

GRID = IMAGE_SIZE // PATCH_SIZE
IGNORE_INDEX = -100
_IMAGE_KEYS = ("pixel_values", "aspect_ratio_ids", "aspect_ratio_mask")


@dataclass(frozen=True)
class TrainConfig:
    """Everything that determines a training run (recorded in ``metrics.json``)."""

    family: DemoFamily
    steps: int = 1500
    batch_size: int = 32
    learning_rate: float = 1e-3
    warmup_fraction: float = 0.05
    weight_decay: float = 0.01
    seed: int = 0
    train_scenes: int = 12000
    kind_weights: tuple[tuple[str, float], ...] = tuple((kind, 1.0) for kind in QUESTION_KINDS)
    volcano_fraction: float = 0.0
    volcano_start: int = 0
    p_wrong: float = 0.5
    vqa_prompt_fraction: float = 0.5
    volcano_turn_weights: tuple[float, float, float, float] = (0.45, 0.15, 0.3, 0.1)
    vision_steps: int = 800
    vision_batch_size: int = 64
    vision_learning_rate: float = 3e-3
    freeze_vision: bool = True
    eval_scenes: int = 200
    volcano_eval_samples: int = 100
    architecture: Architecture = field(default_factory=Architecture)


DEFAULT_CONFIGS: dict[str, TrainConfig] = {
    "llava": TrainConfig(
        family="llava",
        steps=2200,
        vision_steps=1500,
        volcano_fraction=0.6,
        volcano_start=700,
        vqa_prompt_fraction=0.3,
        architecture=Architecture(text_layers=8),
    ),
    "mllama": TrainConfig(family="mllama", architecture=Architecture(text_layers=10)),
}


def image_tensors(processor: Any, images: Sequence[Image.Image]) -> dict[str, torch.Tensor]:
    """The image-side tensors the processor makes for ``images`` (one image per example)."""
    batch: Any = [[image] for image in images] if isinstance(processor, MllamaProcessor) else list(images)
    outputs = processor.image_processor(images=batch, return_tensors="pt")
    return {k: v for k, v in outputs.items() if k in _IMAGE_KEYS}


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
        self._text[key] = {k: v for k, v in inputs.items() if k not in _IMAGE_KEYS}
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
    for key in _IMAGE_KEYS:
        if key in examples[0].inputs:
            batch[key] = torch.cat([ex.inputs[key] for ex in examples])
    if cross:
        batch["cross_attention_mask"] = torch.stack(cross)
    return batch, labels


def shared_prefix_length(model: Any, input_ids: torch.Tensor) -> int:
    """How many leading tokens every row shares, up to the first image token (0 for Mllama)."""
    if model.config.model_type != "llava":
        return 0
    same = (input_ids == input_ids[:1]).all(dim=0) & (input_ids[0] != model.config.image_token_id)
    return int(same.long().cumprod(dim=0).sum())


def answer_loss(
    model: Any, batch: dict[str, torch.Tensor], labels: torch.Tensor, *, reduction: str = "mean"
) -> torch.Tensor:
    """Cross-entropy of the next-token predictions at the labelled positions (mean or sum).

    For LLaVA the prefix that every row shares (BOS, system line, ``USER:``) runs once and its
    keys/values are repeated over the batch: the same loss and gradients for about half the work.
    """
    prefix = shared_prefix_length(model, batch["input_ids"])
    if prefix < 2:
        prefix, cache, inputs = 0, None, batch
    else:
        ids = batch["input_ids"]
        cache = compat.output_cache(model.model.language_model(input_ids=ids[:1, :prefix], use_cache=True))
        cache.batch_repeat_interleave(ids.shape[0])
        inputs = {**batch, "input_ids": ids[:, prefix:]}
    # Only the positions that predict a label in some row go through the LM head.
    keep = (labels[:, prefix + 1 :] != IGNORE_INDEX).any(dim=0).nonzero().flatten()
    continued = {compat.model_cache_argument(model): cache} if cache is not None else {}
    logits = model(**inputs, **continued, use_cache=cache is not None, logits_to_keep=keep).logits
    targets = labels[:, prefix + 1 + keep]
    return torch.nn.functional.cross_entropy(
        logits.flatten(0, 1).float(), targets.flatten(), reduction=reduction
    )


def length_groups(lengths: Sequence[int], max_groups: int = 3, overhead: int = 512) -> list[list[int]]:
    """Indices of ``lengths`` in at most ``max_groups`` groups of similar length, chosen to minimise
    the padded tokens of the groups' batches plus ``overhead`` tokens per forward pass (the fixed
    cost of a pass; 512 was the fastest of 0, 128, 512 and 2048 on 2 CPU cores).

    Questions wrapped in the VQAv2 prompt are about twice as long as plain ones; one right-padded
    batch of both spends ~40% of its work on padding.
    """
    order = sorted(range(len(lengths)), key=lambda i: (lengths[i], i))
    sorted_lengths = [lengths[i] for i in order]
    n = len(order)
    inf = float("inf")
    # best[g][j]: least cost of the first j sorted rows in g groups; cut[g][j]: where its last group starts.
    best = [[inf] * (n + 1) for _ in range(max_groups + 1)]
    cut = [[0] * (n + 1) for _ in range(max_groups + 1)]
    best[0][0] = 0.0
    for groups in range(1, max_groups + 1):
        for end in range(1, n + 1):
            for start in range(end):
                cost = best[groups - 1][start] + (end - start) * sorted_lengths[end - 1] + overhead
                if cost < best[groups][end]:
                    best[groups][end], cut[groups][end] = cost, start
    groups = min(range(1, max_groups + 1), key=lambda g: best[g][n])
    bounds, end = [], n
    for g in range(groups, 0, -1):
        bounds.append((cut[g][end], end))
        end = cut[g][end]
    return [order[start:end] for start, end in reversed(bounds) if end > start]


def batch_loss(model: Any, examples: Sequence[Example], pad_id: int) -> torch.Tensor:
    """Mean cross-entropy over every target token of ``examples``: the loss of one padded batch of
    them, computed over groups of similar length (`length_groups`) to skip most of the padding."""
    targets = sum(len(example.target_ids) for example in examples)
    total = torch.zeros(())
    for group in length_groups([ex.inputs["input_ids"].shape[1] + len(ex.target_ids) for ex in examples]):
        batch, labels = collate([examples[i] for i in group], pad_id)
        total = total + answer_loss(model, batch, labels, reduction="sum")
    return total / targets


def reference_loss(model: Any, examples: Sequence[Example], pad_id: int) -> torch.Tensor:
    """`batch_loss` the slow, plain way: one right-padded batch, one full forward, logits everywhere."""
    batch, labels = collate(examples, pad_id)
    logits = model(**batch).logits[:, :-1]
    return torch.nn.functional.cross_entropy(logits.flatten(0, 1).float(), labels[:, 1:].flatten())


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


def freeze_vision(model: Any) -> None:
    """Stop training the vision tower (LLaVA's CLIP tower, Mllama's vision model)."""
    (
        model.model.vision_tower if model.config.model_type == "llava" else model.model.vision_model
    ).requires_grad_(False)


def vision_features(model: Any, pixels: dict[str, torch.Tensor]) -> torch.Tensor:
    """(B, GRID², D) features of the first tile's patch grid as the decoder receives them (unprojected)."""
    if model.config.model_type == "llava":
        hidden = model.model.vision_tower(pixels["pixel_values"], output_hidden_states=True).hidden_states
        return hidden[model.config.vision_feature_layer][:, 1:]
    return model.model.vision_model(**pixels).last_hidden_state[:, 0, 0, 1 : 1 + GRID * GRID]


PROBE_SIZES = (
    1 + len(KINDS),
    1 + len(COLOURS),
    1 + len(POSITIONS),
    1 + len(POSITIONS) * len(KINDS),
    1 + len(POSITIONS) * len(COLOURS),
    1 + len(COLOURS) * len(KINDS),
)


def cell_labels(sample: Sample) -> torch.Tensor:
    """(GRID², 6) probe targets per patch, about the shape in the patch's cell: 1 + the index of its
    kind, colour, position (in `POSITIONS`), position x kind, position x colour and colour x kind;
    all 0 when the cell is empty.

    Tying the position to the shape keeps it out of background patches, and the pairs let the
    decoder answer "where is the circle" or "is there a red circle" from the sum of what it sees.
    """
    labels = [[0] * len(PROBE_SIZES) for _ in POSITIONS]
    for shape in sample.scene.shapes:
        cell = POSITIONS.index(sample.scene.position_of(shape))
        kind, colour = KINDS.index(shape.kind), list(COLOURS).index(shape.colour)
        labels[cell] = [
            1 + kind,
            1 + colour,
            1 + cell,
            1 + cell * len(KINDS) + kind,
            1 + cell * len(COLOURS) + colour,
            1 + colour * len(KINDS) + kind,
        ]
    half = GRID // 2
    return torch.tensor(
        [labels[2 * (row // half) + col // half] for row in range(GRID) for col in range(GRID)]
    )


def pretrain_vision(model: Any, processor: Any, config: TrainConfig, *, progress: bool = True) -> float:
    """Stage 1: train the vision tower with linear probes that read, at every patch, what `cell_labels`
    says about the shape in its cell; then start the projector from the probes.

    Returns the fraction of patches with every probe right over the last 10 batches.
    """
    sizes = list(PROBE_SIZES)
    width = model.config.vision_config.hidden_size * _feature_multiple(model)
    probe = torch.nn.Linear(width, sum(sizes))
    tower = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW([*tower, *probe.parameters()], lr=config.vision_learning_rate)
    size = config.vision_batch_size
    samples = make_split(config.vision_steps * size, config.seed + 1, questions_per_scene=1)
    accuracies: list[float] = []
    for step in tqdm(range(config.vision_steps), desc="vision", disable=not progress):
        batch = samples[step * size : (step + 1) * size]
        targets = torch.stack([cell_labels(sample) for sample in batch]).flatten(0, 1)
        logits = probe(vision_features(model, image_tensors(processor, [render(s.scene) for s in batch])))
        heads = logits.flatten(0, 1).split(sizes, dim=-1)
        loss = sum(
            (torch.nn.functional.cross_entropy(head, targets[:, i]) for i, head in enumerate(heads)),
            torch.zeros(()),
        )
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        right = torch.stack([head.argmax(-1) for head in heads], dim=-1) == targets
        accuracies.append(float(right.all(dim=-1).float().mean()))
    seed_projector(
        model,
        probe,
        vision_features(model, image_tensors(processor, [render(s.scene) for s in batch])),
    )
    return float(np.mean(accuracies[-10:]))


def seed_projector(model: Any, probe: torch.nn.Linear, features: torch.Tensor) -> None:
    """Start the projector from the probes, as an alignment stage would: the first rows of its first
    layer compute the probes' logits, scaled to unit standard deviation over ``features``, so that
    everything the probes read is equally salient to the decoder from its first step. Other rows keep
    their random initialisation."""
    projector = model.model.multi_modal_projector
    first = projector.linear_1 if model.config.model_type == "llava" else projector
    rows = probe.out_features
    with torch.no_grad():
        scale = 1.0 / probe(features).flatten(0, -2).std(dim=0).clamp_min(1e-6)
        first.weight[:rows] = probe.weight * scale[:, None]
        first.bias[:rows] = probe.bias * scale


def _feature_multiple(model: Any) -> int:
    if model.config.model_type == "llava":
        return 1
    return 1 + len(model.config.vision_config.intermediate_layers_indices)


def _learning_rate(step: int, config: TrainConfig) -> float:
    warmup = max(1, int(config.warmup_fraction * config.steps))
    if step < warmup:
        return config.learning_rate * (step + 1) / warmup
    progress = (step - warmup) / max(1, config.steps - warmup)
    return config.learning_rate * (0.1 + 0.9 * 0.5 * (1.0 + math.cos(math.pi * progress)))


def seed_everything(seed: int) -> None:
    """Seed Python, NumPy and torch (CPU) random state."""
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def build(config: TrainConfig) -> tuple[Any, Any]:
    """The untrained, seeded model of ``config.family`` and its processor."""
    tokenizer = build_demo_tokenizer(config.family, config.seed)
    seed_everything(config.seed)
    return build_demo_model(config.family, config.architecture, tokenizer)


def train(config: TrainConfig, *, progress: bool = True) -> tuple[Any, Any, dict[str, Any]]:
    """Build and train the model of ``config``; returns the model (float32, eval mode), processor, log."""
    model, processor = build(config)
    model.train()
    start = time.perf_counter()
    probe_accuracy = (
        pretrain_vision(model, processor, config, progress=progress) if config.vision_steps else None
    )
    vision_seconds = time.perf_counter() - start
    if config.freeze_vision:
        freeze_vision(model)
    stream = ExampleStream(config, Encoder(processor, get_adapter(model)))
    attention = model.config._attn_implementation
    # At these sequence lengths (< 200) eager attention trains ~10% faster on CPU than SDPA.
    model.set_attn_implementation("eager")
    optimizer = torch.optim.AdamW(
        [p for p in model.parameters() if p.requires_grad],
        lr=config.learning_rate,
        weight_decay=config.weight_decay,
        betas=(0.9, 0.98),
    )
    pad_id = int(processor.tokenizer.pad_token_id)
    losses: list[float] = []
    bar = tqdm(range(config.steps), desc=f"train {config.family}", disable=not progress)
    for step in bar:
        for group in optimizer.param_groups:
            group["lr"] = _learning_rate(step, config)
        loss = batch_loss(model, stream.batch(step), pad_id)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        losses.append(float(loss.detach()))
        if step % 10 == 0:
            bar.set_postfix(loss=f"{np.mean(losses[-50:]):.3f}")
    model.eval()
    model.set_attn_implementation(attention)
    log = {
        "vision_seconds": round(vision_seconds, 1),
        "vision_probe_accuracy": probe_accuracy,
        "train_seconds": round(time.perf_counter() - start, 1),
        "final_loss": float(np.mean(losses[-50:])) if losses else None,
        "loss_per_100_steps": [
            round(float(np.mean(losses[i : i + 100])), 4) for i in range(0, len(losses), 100)
        ],
    }
    return model, processor, log


def save(model: Any, processor: Any, out: Path, metrics: dict[str, Any]) -> None:
    """Write the float16 checkpoint, the processor and ``metrics.json`` into ``out``."""
    out.mkdir(parents=True, exist_ok=True)
    model.half().save_pretrained(out, safe_serialization=True)
    processor.save_pretrained(out)
    (out / "metrics.json").write_text(json.dumps(metrics, indent=2) + "\n", encoding="utf-8")


def run(config: TrainConfig, out: Path, *, progress: bool = True) -> dict[str, Any]:
    """Train, score on the held-out split and save; returns the metrics written."""
    torch.set_num_threads(min(2, torch.get_num_threads()))
    model, processor, log = train(config, progress=progress)
    adapter = get_adapter(model)
    held_out = make_split(config.eval_scenes, EVAL_SEED)
    start = time.perf_counter()
    answers = evaluate_answers(model, processor, adapter, held_out, progress=progress)
    vqa_answers = evaluate_answers(model, processor, adapter, held_out, progress=progress, wrap=vqav2_prompt)
    volcano = None
    if config.volcano_fraction > 0 and config.volcano_eval_samples > 0:
        volcano = evaluate_volcano(model, processor, adapter, held_out[: config.volcano_eval_samples])
    metrics = {
        "family": config.family,
        "config": asdict(config),
        "training": log,
        "eval_seconds": round(time.perf_counter() - start, 1),
        "held_out": {"seed": EVAL_SEED, "scenes": config.eval_scenes, **answers},
        "held_out_vqav2_prompt": vqa_answers,
        "volcano": volcano,
        "software": {
            "torch": torch.__version__,
            "transformers": transformers.__version__,
            "python": platform.python_version(),
            "threads": torch.get_num_threads(),
        },
    }
    save(model, processor, out, metrics)
    return metrics


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m vistrace.demo.train", description=__doc__.split("\n")[0])
    parser.add_argument("--family", choices=DEMO_FAMILIES, required=True)
    parser.add_argument(
        "--out", type=Path, default=None, help="output directory (default: inside the package)"
    )
    parser.add_argument("--steps", type=int, default=None, help="answer-training steps")
    parser.add_argument("--vision-steps", type=int, default=None, help="vision-pretraining steps")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--batch-size", type=int, default=None)
    parser.add_argument("--train-scenes", type=int, default=None, help="training scenes (3 questions each)")
    parser.add_argument("--eval-scenes", type=int, default=None, help="held-out scenes (3 questions each)")
    parser.add_argument(
        "--volcano-eval", type=int, default=None, help="held-out questions for the Volcano check"
    )
    parser.add_argument("--no-progress", action="store_true", help="no progress bars")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Command-line entry point; see ``--help``."""
    args = _parser().parse_args(argv)
    overrides = {
        "steps": args.steps,
        "vision_steps": args.vision_steps,
        "batch_size": args.batch_size,
        "train_scenes": args.train_scenes,
        "eval_scenes": args.eval_scenes,
        "volcano_eval_samples": args.volcano_eval,
    }
    config = replace(
        DEFAULT_CONFIGS[args.family], seed=args.seed, **{k: v for k, v in overrides.items() if v is not None}
    )
    out = args.out if args.out is not None else package_model_dir(args.family)
    metrics = run(config, out, progress=not args.no_progress)
    held_out = metrics["held_out"]
    print(
        f"{config.family}: accuracy {held_out['accuracy']:.3f} on {held_out['questions']} held-out questions"
    )
    wrapped = metrics["held_out_vqav2_prompt"]
    print(f"  {'kind':<10} {'plain':>6} {'VQAv2 prompt':>13}")
    for kind, accuracy in held_out["accuracy_by_kind"].items():
        print(f"  {kind:<10} {accuracy:6.3f} {wrapped['accuracy_by_kind'][kind]:13.3f}")
    print(f"  {'overall':<10} {held_out['accuracy']:6.3f} {wrapped['accuracy']:13.3f}")
    print(f"saved to {out} ({metrics['training']['train_seconds']:.0f} s of training)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
