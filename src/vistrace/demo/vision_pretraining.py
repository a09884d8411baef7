"""Stage 1 of demo training: linear probes teach the vision tower, at every patch, what shape lies in
its cell; the projector then starts from the probes and the tower is frozen."""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from tqdm.auto import tqdm

from vistrace.demo.models import IMAGE_SIZE, PATCH_SIZE
from vistrace.demo.training_batches import image_tensors
from vistrace.demo.training_config import TrainConfig
from vistrace.demo.world import COLOURS, KINDS, POSITIONS, Sample, make_split, render

GRID = IMAGE_SIZE // PATCH_SIZE


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
