"""Seconds per answer-training step of the demo models: the plain reference against what
`vistrace.demo.train` does, side by side on the same batches.

- reference: one right-padded batch, logits at every position, SDPA attention (`reference_loss`);
- fast: rows grouped by length, the shared prefix run once, logits only where a label is predicted,
  eager attention (`batch_loss`).

Each step is forward + backward + clip + AdamW on the same model, the two paths alternating batch
by batch so that machine noise hits both alike. For LLaVA the batches come from the Volcano phase
(what most of its steps are).

    python benchmarks/demo_training.py [--family llava|mllama|both] [--steps 30] [--threads 2]
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Callable, Sequence
from dataclasses import replace
from typing import Any

import torch

from vistrace.adapters import get_adapter
from vistrace.demo.train import build
from vistrace.demo.training_batches import Encoder, Example, ExampleStream
from vistrace.demo.training_config import DEFAULT_CONFIGS
from vistrace.demo.training_loss import batch_loss, reference_loss
from vistrace.demo.vision_pretraining import freeze_vision

LossFn = Callable[[Any, Sequence[Example], int], torch.Tensor]


def _step(
    model: Any, optimizer: torch.optim.Optimizer, loss_fn: LossFn, batch: list[Example], pad: int
) -> float:
    start = time.perf_counter()
    loss = loss_fn(model, batch, pad)
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
    optimizer.step()
    return time.perf_counter() - start


def measure(family: str, steps: int) -> dict[str, float]:
    """Mean seconds per step of each path over ``steps`` batches (after one warm-up step each)."""
    config = replace(DEFAULT_CONFIGS[family], train_scenes=2000)
    model, processor = build(config)
    model.train()
    freeze_vision(model)
    stream = ExampleStream(config, Encoder(processor, get_adapter(model)))
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-4)
    pad = int(processor.tokenizer.pad_token_id)
    first = config.volcano_start if config.volcano_fraction > 0 else 0
    batches = [stream.batch(first + i) for i in range(steps + 1)]
    paths: dict[str, tuple[str, LossFn]] = {
        "reference": ("sdpa", reference_loss),
        "fast": ("eager", batch_loss),
    }
    seconds = {name: 0.0 for name in paths}
    for index, batch in enumerate(batches):
        for name, (attention, loss_fn) in paths.items():
            model.set_attn_implementation(attention)
            elapsed = _step(model, optimizer, loss_fn, batch, pad)
            if index > 0:
                seconds[name] += elapsed
    return {name: total / steps for name, total in seconds.items()}


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--family", choices=["llava", "mllama", "both"], default="both")
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    families = ["llava", "mllama"] if args.family == "both" else [args.family]
    print(f"{'family':<8} {'reference s/step':>17} {'fast s/step':>12} {'ratio':>6}")
    for family in families:
        result = measure(family, args.steps)
        ratio = result["reference"] / result["fast"]
        print(f"{family:<8} {result['reference']:17.3f} {result['fast']:12.3f} {ratio:5.2f}x")


if __name__ == "__main__":
    main()
