"""`traced(model, plan)`: route the language model's attention through the seam for one block."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any

from vistrace.compat import require_static_contracts, set_text_attention, text_attention
from vistrace.hook.plan import Plan, use_plan
from vistrace.hook.seam import SEAM_NAME, register


@contextlib.contextmanager
def traced(model: Any, plan: Plan | None = None) -> Iterator[Any]:
    """Switch the language model (not the vision tower) to the seam, activate `plan`, and restore the
    previous attention implementation and remove every hook on exit, even on error.

    Raises `vistrace.compat.TransformersContractError` before anything runs when the installed
    transformers breaks a contract that can be probed without running the model."""
    from vistrace.adapters import get_adapter

    register()
    require_static_contracts(model)
    adapter = get_adapter(model)
    previous = text_attention(model)
    handles = []
    try:
        set_text_attention(model, SEAM_NAME)
        handles = adapter.install_hooks(model)
        with use_plan(plan):
            yield model
    finally:
        for handle in handles:
            handle.remove()
        set_text_attention(model, previous)
