"""vistrace: how a vision-language model uses the image while it answers.

The public API (imported on first use, so `import vistrace` stays light and has no side effects):

- `load(model, *, dtype="auto", device, device_map, vision_tower) -> VisionModel`
- `knockout_sweep(model, prompt, answer, *, pathways, window, mode, strategy) -> KnockoutSweep`
- `knockout_sweeps(model, [(prompt, answer), …], …, pack_memory) -> iterator of KnockoutSweep`
- `answer_probability_by_layer(model, prompt, answer) -> (layers, tokens) tensor` (a logit lens)
- `attend(model, image, prompt, …) -> ImageAttention`
- `volcano_loop(model, image, question, …) -> VolcanoResult`
- extension points: `register_adapter` (a model family), `register_pool` (a layer/head pooling),
  `register_reader` (a dataset reader for `vistrace eval --dataset`), `register_metric` (the metric
  that scores a dataset's predictions)
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from vistrace.adapters import PreparedPrompt, register_adapter
    from vistrace.api import (
        VisionModel,
        answer_probability_by_layer,
        attend,
        knockout_sweep,
        knockout_sweeps,
        load,
        volcano_loop,
    )
    from vistrace.capture.pooling import register_pool
    from vistrace.data.by_name import register_reader
    from vistrace.data.metrics import register_metric
    from vistrace.knockout.sweep import Pathway
    from vistrace.results import ImageAttention, KnockoutSweep
    from vistrace.volcano.loop import VolcanoResult

__version__ = "0.1.0"

_EXPORTS = {
    "load": "vistrace.api",
    "answer_probability_by_layer": "vistrace.api",
    "knockout_sweep": "vistrace.api",
    "knockout_sweeps": "vistrace.api",
    "attend": "vistrace.api",
    "volcano_loop": "vistrace.api",
    "VisionModel": "vistrace.api",
    "KnockoutSweep": "vistrace.results",
    "ImageAttention": "vistrace.results",
    "VolcanoResult": "vistrace.volcano.loop",
    "PreparedPrompt": "vistrace.adapters",
    "Pathway": "vistrace.knockout.sweep",
    "register_adapter": "vistrace.adapters",
    "register_pool": "vistrace.capture.pooling",
    "register_reader": "vistrace.data.by_name",
    "register_metric": "vistrace.data.metrics",
}

__all__ = [
    "ImageAttention",
    "KnockoutSweep",
    "Pathway",
    "PreparedPrompt",
    "VisionModel",
    "VolcanoResult",
    "__version__",
    "answer_probability_by_layer",
    "attend",
    "knockout_sweep",
    "knockout_sweeps",
    "load",
    "register_adapter",
    "register_metric",
    "register_pool",
    "register_reader",
    "volcano_loop",
]


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        return getattr(importlib.import_module(_EXPORTS[name]), name)
    raise AttributeError(f"module 'vistrace' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(__all__)
