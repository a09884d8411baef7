"""The per-run plan the seam reads: what to block and what to capture, held in a ContextVar."""

from __future__ import annotations

import contextlib
import dataclasses
from collections.abc import Iterator, Mapping
from contextvars import ContextVar
from dataclasses import dataclass, field
from typing import Literal, Protocol

import torch

from vistrace.roles import Role

KnockoutMode = Literal["strict", "paper"]


class PrefixAttention(Protocol):
    """Attention of a re-run's rows over a shared key prefix followed by the call's own keys."""

    @property
    def length(self) -> int:
        """P, the number of prefix keys."""
        ...

    def attend(
        self,
        query: torch.Tensor,
        key: torch.Tensor,
        value: torch.Tensor,
        attention_mask: torch.Tensor | None,
        scaling: float,
        blocked: torch.Tensor | None,
        mode: str,
        *,
        need_weights: bool,
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Output (B, Q, H, D), and weights (B, H, Q, P + K) float32 when `need_weights`."""
        ...


@dataclass(frozen=True)
class Knockout:
    """Block attention from keys of role `src` to queries of role `dst` in chosen layers.

    All tensors are indexed by batch element `b`, so one forward can run many windows at once.

    - `roles`: (B, S) int8 role of every absolute position (the mode's own assignment).
    - `src`, `dst`: (B,) int8 role codes of the pathway of each batch element.
    - `layers`: (B, L) bool, True where element `b` blocks in layer `l`.
    """

    roles: torch.Tensor
    src: torch.Tensor
    dst: torch.Tensor
    layers: torch.Tensor


@dataclass
class CaptureRecorder:
    """Collects, for each forward call, the last query row's attention on image keys.

    `image_keys`: (B, N) absolute key positions of the image features for inline families, or None
    when every key of the captured layers is an image feature (cross-attention).
    `rows[layer]` gets one (B, H, N) float32 CPU tensor per forward call. Rows wait on the model's
    device and are copied to the CPU `flush_every` at a time, so that a GPU run does not stop to
    synchronise at every layer of every generated token.
    """

    layers: frozenset[int]
    image_keys: torch.Tensor | None = None
    rows: dict[int, list[torch.Tensor]] = field(default_factory=dict)
    flush_every: int = 256
    _pending: list[tuple[int, torch.Tensor]] = field(default_factory=list, init=False, repr=False)

    def record(self, layer: int, weights: torch.Tensor) -> None:
        self._pending.append((layer, weights.detach().float()))
        if len(self._pending) >= self.flush_every:
            self.flush()

    def flush(self) -> None:
        """Copy the waiting rows to the CPU in one transfer."""
        if not self._pending:
            return
        moved = torch.cat([weights.reshape(-1) for _, weights in self._pending]).cpu()
        for (layer, weights), flat in zip(
            self._pending, moved.split([w.numel() for _, w in self._pending]), strict=True
        ):
            self.rows.setdefault(layer, []).append(flat.view(weights.shape))
        self._pending.clear()

    def stacked(self) -> torch.Tensor:
        """(calls, B, layers, H, N): every recorded call, layers in ascending order."""
        self.flush()
        ordered = [torch.stack(self.rows[layer], dim=0) for layer in sorted(self.rows)]
        return torch.stack(ordered, dim=2)


@dataclass(frozen=True)
class Segment:
    """The batch elements `index` (1-d long tensor, positions in the call's batch) of one sample in a
    call that packs several samples' re-run rows, and that sample's own plan (its roles, offset,
    image rows and key prefix, restricted to these elements)."""

    index: torch.Tensor
    plan: Plan


@dataclass(frozen=True)
class Plan:
    """What the seam does in this run. An empty plan hands every call to sdpa unchanged.

    - `cross_layers`: layers whose keys are image features (Mllama).
    - `mode`: how a block is applied (strict: exact zero weight; paper: the dtype's most negative
      value added to the score, so a fully blocked row becomes uniform).
    - `offset`: absolute position of the first query row of the current forward call.
    - `image_rows`: (B, S) bool, rows the processor lets see the image (Mllama's cross-attention
      mask); paper mode blocks the other rows of cross-attention layers instead of zeroing them.
    - `prefix`: per layer, the attention over keys of absolute positions 0 … P-1 that come before
      the keys the attention module passes (all image keys of a cross-attention layer, which then
      passes none). Lets a re-run of a few rows share the clean pass' keys across a batch without
      copying them (`vistrace.knockout.attention.PrefixKV`).
    - `segments`: set when one call packs the re-run rows of several samples: each segment's
      elements are attended with that segment's own plan, never to another sample's keys (the
      seam splits the call; `vistrace.knockout.fast` packs). Every other field is then unused.
    """

    cross_layers: frozenset[int] = frozenset()
    mode: KnockoutMode = "strict"
    knockout: Knockout | None = None
    capture: CaptureRecorder | None = None
    offset: int = 0
    image_rows: torch.Tensor | None = None
    prefix: Mapping[int, PrefixAttention] | None = None
    segments: tuple[Segment, ...] | None = None

    def at_offset(self, offset: int) -> Plan:
        return dataclasses.replace(self, offset=offset)

    @property
    def is_empty(self) -> bool:
        return (
            self.knockout is None
            and self.capture is None
            and self.mode == "strict"
            and self.prefix is None
            and self.segments is None
        )


_ACTIVE_PLAN: ContextVar[Plan | None] = ContextVar("vistrace_plan", default=None)


def active_plan() -> Plan | None:
    """The plan of the current run, or None outside `use_plan`."""
    return _ACTIVE_PLAN.get()


@contextlib.contextmanager
def use_plan(plan: Plan | None) -> Iterator[Plan | None]:
    """Make `plan` the active plan for the body of the `with` block."""
    token = _ACTIVE_PLAN.set(plan)
    try:
        yield plan
    finally:
        _ACTIVE_PLAN.reset(token)


__all__ = [
    "CaptureRecorder",
    "Knockout",
    "KnockoutMode",
    "Plan",
    "Role",
    "Segment",
    "active_plan",
    "use_plan",
]
