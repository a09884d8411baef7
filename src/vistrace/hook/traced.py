"""`traced(model, plan, hooks=...)`: route the language model's attention through the seam for one block."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any, Protocol

from torch.utils.hooks import RemovableHandle

from vistrace.compat import require_static_contracts, set_text_attention, text_attention
from vistrace.hook.plan import Plan, use_plan
from vistrace.hook.seam import SEAM_NAME, register


class ModelHooks(Protocol):
    """What a family adds around the seam for one traced block (a family adapter is one)."""

    def install_hooks(self, model: Any) -> list[RemovableHandle]:
        """Install the family's module hooks on `model`; the handles are removed on exit."""
        ...


@contextlib.contextmanager
def traced(model: Any, plan: Plan | None = None, *, hooks: ModelHooks) -> Iterator[Any]:
    """Switch the language model (not the vision tower) to the seam, activate `plan`, install the
    family's `hooks` (required, so that no caller forgets them: Mllama's row-mask hook is one), and
    restore the previous attention implementation and remove every hook on exit, even on error.

    `vistrace.adapters.traced(model, plan)` passes the model's registered adapter as `hooks`.

    Raises `vistrace.compat.TransformersContractError` before anything runs when the installed
    transformers breaks a contract that can be probed without running the model."""
    register()
    require_static_contracts(model)
    previous = text_attention(model)
    handles: list[RemovableHandle] = []
    try:
        set_text_attention(model, SEAM_NAME)
        handles = hooks.install_hooks(model)
        with use_plan(plan):
            yield model
    finally:
        for handle in handles:
            handle.remove()
        set_text_attention(model, previous)
