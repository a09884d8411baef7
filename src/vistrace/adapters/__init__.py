"""Adapters: one small module per model family, looked up by the config's `model_type`."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any

from vistrace.adapters.base import (
    Adapter,
    Geometry,
    Grid,
    InlineAdapter,
    PreparedPrompt,
    UnsupportedModelError,
)
from vistrace.adapters.gemma3 import GEMMA3_ADAPTER
from vistrace.adapters.idefics3 import IDEFICS3_ADAPTERS
from vistrace.adapters.internvl import INTERNVL_ADAPTER, REMOTE_CODE_MODEL_TYPES
from vistrace.adapters.llava import LlavaAdapter
from vistrace.adapters.llava_next import LLAVA_NEXT_ADAPTERS
from vistrace.adapters.mllama import MllamaAdapter
from vistrace.adapters.qwen2_vl import QWEN_ADAPTERS
from vistrace.hook import Plan
from vistrace.hook.traced import traced as traced_with

_REGISTRY: dict[str, Adapter] = {}


def register_adapter(adapter: Adapter, *, model_type: str | None = None, replace: bool = False) -> None:
    """Register `adapter` for `model_type` (default: `adapter.model_type`)."""
    key = model_type or adapter.model_type
    if key in _REGISTRY and not replace:
        raise ValueError(f"an adapter for {key!r} is already registered; pass replace=True to override it")
    _REGISTRY[key] = adapter


def supported_model_types() -> tuple[str, ...]:
    return tuple(sorted(_REGISTRY))


def get_adapter(model_or_type: Any) -> Adapter:
    """The adapter for a model, a config or a `model_type` string; a clear error when none exists."""
    if isinstance(model_or_type, str):
        model_type = model_or_type
    else:
        config = getattr(model_or_type, "config", model_or_type)
        model_type = str(getattr(config, "model_type", type(model_or_type).__name__))
    try:
        adapter = _REGISTRY[model_type]
    except KeyError:
        raise UnsupportedModelError(
            f"vistrace has no adapter for model type {model_type!r}; supported: "
            f"{', '.join(supported_model_types())}. Add one with "
            "vistrace.adapters.register_adapter(MyAdapter()) (see docs/adding-a-model-family.md)."
        ) from None
    if not isinstance(model_or_type, str):
        problem = adapter.structure_error(getattr(model_or_type, "config", model_or_type))
        if problem is not None:
            raise UnsupportedModelError(problem)
    return adapter


@contextlib.contextmanager
def traced(model: Any, plan: Plan | None = None) -> Iterator[Any]:
    """`vistrace.hook.traced` with the model's own adapter installing the family's hooks: the way
    every vistrace computation routes a model through the seam."""
    with traced_with(model, plan, hooks=get_adapter(model)) as traced_model:
        yield traced_model


register_adapter(LlavaAdapter())
register_adapter(MllamaAdapter())
for _adapter in (*QWEN_ADAPTERS, *LLAVA_NEXT_ADAPTERS, *IDEFICS3_ADAPTERS, INTERNVL_ADAPTER, GEMMA3_ADAPTER):
    register_adapter(_adapter)
# Remote-code InternVL checkpoints: the adapter refuses them with one line naming the -hf conversion.
for _remote in REMOTE_CODE_MODEL_TYPES:
    register_adapter(INTERNVL_ADAPTER, model_type=_remote)

__all__ = [
    "Adapter",
    "Geometry",
    "Grid",
    "InlineAdapter",
    "LlavaAdapter",
    "MllamaAdapter",
    "PreparedPrompt",
    "UnsupportedModelError",
    "get_adapter",
    "register_adapter",
    "supported_model_types",
    "traced",
]
