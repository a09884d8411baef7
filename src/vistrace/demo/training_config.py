"""What determines a demo training run, and the settings each demo family is trained with."""

from __future__ import annotations

from dataclasses import dataclass, field

from vistrace.demo.models import Architecture
from vistrace.demo.world import QUESTION_KINDS
from vistrace.models.builtin import DemoFamily


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
