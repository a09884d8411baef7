"""`traced(model, plan, hooks=...)`: route the language model's attention through the seam for one block."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from contextvars import ContextVar
from typing import Any, Protocol

from torch.utils.hooks import RemovableHandle

from vistrace.compat import decoder_layers, require_static_contracts, set_text_attention, text_attention
from vistrace.hook.plan import Plan, use_plan
from vistrace.hook.seam import REACHED_LAYERS, SEAM_NAME, register


class ModelHooks(Protocol):
    """What a family adds around the seam for one traced block (a family adapter is one)."""

    def install_hooks(self, model: Any) -> list[RemovableHandle]:
        """Install the family's module hooks on `model`; the handles are removed on exit."""
        ...


class UnreachedLayersError(ValueError):
    """Decoder layers ran without their attention reaching the seam (linear-attention or state-space
    layers, or attention that does not go through transformers' attention interface): a trace would
    miss them and still look complete."""

    def __init__(self, missing: list[int], total: int):
        super().__init__(
            f"decoder layers {_spans(missing)} of {total} do not reach vistrace's attention function (their "
            "mixing does not go through transformers' attention interface, e.g. linear-attention layers); "
            "vistrace cannot block or read them, so it does not trace this model"
        )
        self.missing = missing


def _spans(indices: list[int]) -> str:
    """`0-2, 4, 6-7` for [0, 1, 2, 4, 6, 7]."""
    parts: list[str] = []
    start = previous = indices[0]
    for index in [*indices[1:], None]:
        if index is not None and index == previous + 1:
            previous = index
            continue
        parts.append(str(start) if start == previous else f"{start}-{previous}")
        if index is not None:
            start = previous = index
    return ", ".join(parts)


# (layers that ran, layers that reached the seam, number of decoder layers) of each open block.
_BLOCKS: ContextVar[tuple[tuple[set[int], set[int], int], ...]] = ContextVar("vistrace_blocks", default=())


def require_reached() -> None:
    """`UnreachedLayersError` when, in the innermost traced block so far, a decoder layer ran without
    its attention reaching the seam: for a caller that reads the model's outputs (its cache) before
    the block ends."""
    blocks = _BLOCKS.get()
    if blocks:
        ran, reached, total = blocks[-1]
        missing = sorted(ran - reached)
        if missing:
            raise UnreachedLayersError(missing, total)


@contextlib.contextmanager
def traced(model: Any, plan: Plan | None = None, *, hooks: ModelHooks) -> Iterator[Any]:
    """Switch the language model (not the vision tower) to the seam, activate `plan`, install the
    family's `hooks` (required, so that no caller forgets them: Mllama's row-mask hook is one), and
    restore the previous attention implementation and remove every hook on exit, even on error.

    `vistrace.adapters.traced(model, plan)` passes the model's registered adapter as `hooks`.

    Raises `vistrace.compat.TransformersContractError` before anything runs when the installed
    transformers breaks a contract that can be probed without running the model, and
    `UnreachedLayersError` at the end of the block when a decoder layer ran without its attention
    reaching the seam."""
    register()
    require_static_contracts(model)
    previous = text_attention(model)
    handles: list[RemovableHandle] = []
    layers = decoder_layers(model)
    ran: set[int] = set()
    reached: set[int] = set()
    token = REACHED_LAYERS.set((*REACHED_LAYERS.get(), reached))
    block = _BLOCKS.set((*_BLOCKS.get(), (ran, reached, len(layers))))
    try:
        set_text_attention(model, SEAM_NAME)
        handles = [
            layer.register_forward_pre_hook(lambda *_, index=index: ran.add(index))
            for index, layer in enumerate(layers)
        ]
        handles += hooks.install_hooks(model)
        with use_plan(plan):
            yield model
    finally:
        _BLOCKS.reset(block)
        REACHED_LAYERS.reset(token)
        for handle in handles:
            handle.remove()
        set_text_attention(model, previous)
    missing = sorted(ran - reached)
    if missing:
        raise UnreachedLayersError(missing, len(layers))
