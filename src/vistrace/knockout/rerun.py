"""Re-run a few rows of the decoder from a chosen layer on top of one clean pass.

A knockout confined to layers >= l leaves every hidden state below layer l exactly as in the clean
pass, and leaves the keys and values of every position before the first row it can change as they
were. So a blocked run only needs, per window, the rows from that first row on, from layer l on:
they start from the clean pass' hidden states at layer l and attend to the clean pass' cached keys.

On top of the clean pass (`vistrace.knockout.clean`), `rerun` drives the decoder layers itself for
a batch of windows that start at different layers: the batch grows as it goes up, a window joining
at its own first layer with the clean hidden states there, and the clean keys are shared by the
whole batch without being copied (`Plan.prefix`). Several samples' batches can share the calls
(`Plan.segments`), each sample's rows attending only to its own keys.
"""

from __future__ import annotations

import bisect
import dataclasses
import itertools
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import torch

from vistrace import compat
from vistrace.adapters import Adapter
from vistrace.adapters.decoder import stack_rows
from vistrace.hook.plan import Knockout, Plan, PrefixAttention, Segment, use_plan
from vistrace.knockout.attention import PrefixKV
from vistrace.knockout.clean import CleanPass


@dataclass
class RowState:
    """Keys and values of the re-run rows of a batch of windows, per decoder layer (the batch at a layer
    is the windows that had started by then): of sample s, rows `firsts[s]` … `ends[s]`-1 (the same
    number for every sample of a packed call); rows before `firsts[s]` are the clean ones."""

    firsts: tuple[int, ...]
    ends: tuple[int, ...]
    keys: dict[int, torch.Tensor]
    values: dict[int, torch.Tensor]

    def upto(self, ends: Sequence[int]) -> RowState:
        """The rows before `ends[s]` of each sample s."""
        if tuple(ends) == self.ends:
            return self
        n = ends[0] - self.firsts[0]
        keys = {i: k[:, :, :n] for i, k in self.keys.items()}
        values = {i: v[:, :, :n] for i, v in self.values.items()}
        return RowState(self.firsts, tuple(ends), keys, values)


@dataclass
class _Layer:
    keys: torch.Tensor
    values: torch.Tensor


class _RerunCache:
    """The cache the decoder layers see in a re-run: a self-attention layer gets back this batch's own
    rows (earlier re-run rows from `reused`, then the new ones); the shared clean keys before them
    reach the seam through `Plan.prefix`. A cross-attention layer reads no keys here (all of them are
    in the prefix). `seen` positions (the shared prefix) precede the rows of this re-run.

    Only the cache methods decoder layers are known to call exist; any other is a convention this
    module does not know, and stops the run naming it."""

    def __init__(self, reused: RowState | None, empty: dict[int, _Layer], seen: int):
        self.reused = reused
        self.layers = empty
        self.seen = seen
        self.keys: dict[int, torch.Tensor] = {}
        self.values: dict[int, torch.Tensor] = {}

    def update(
        self, keys: torch.Tensor, values: torch.Tensor, layer_idx: int, *args: Any, **kwargs: Any
    ) -> tuple[torch.Tensor, torch.Tensor]:
        if self.reused is not None and layer_idx in self.reused.keys:
            keys = torch.cat([self.reused.keys[layer_idx], keys], dim=2)
            values = torch.cat([self.reused.values[layer_idx], values], dim=2)
        self.keys[layer_idx], self.values[layer_idx] = keys, values
        return keys, values

    def get_seq_length(self, layer_idx: int = 0) -> int:
        """Positions before this re-run's rows (Mllama's cross-attention layers before transformers
        5.24 read their cached image keys only when this is positive)."""
        return self.seen

    def __getattr__(self, name: str) -> Any:
        raise compat.MissingCacheMethodError(name)


def _first_elements(plan: Plan, n: int) -> Plan:
    """`plan` restricted to its first `n` batch elements."""
    knockout = plan.knockout
    if knockout is not None:
        knockout = Knockout(knockout.roles[:n], knockout.src[:n], knockout.dst[:n], knockout.layers[:n])
    image_rows = plan.image_rows[:n] if plan.image_rows is not None else None
    return dataclasses.replace(plan, knockout=knockout, image_rows=image_rows)


@dataclass(frozen=True)
class Rows:
    """One sample's part of a re-run call: rows `start` … `end`-1 of the sample of `clean`, for a batch
    of windows, window b running layers first_layers[b] and up (ascending). `plan` holds the batch's
    knockout (full roles, offset ignored) and image rows."""

    clean: CleanPass
    start: int
    end: int
    first_layers: Sequence[int]
    plan: Plan

    @property
    def count(self) -> int:
        return len(self.first_layers)


def rerun(
    adapter: Adapter,
    layers: Sequence[torch.nn.Module],
    finish: Callable[[torch.Tensor], torch.Tensor],
    cross_layers: frozenset[int],
    parts: Sequence[Rows],
    reused: RowState | None = None,
) -> tuple[torch.Tensor, RowState, list[int]]:
    """Re-run the rows of `parts` (one sample each; several samples pack into one call of every layer,
    each attending only to its own keys, through `Plan.segments`) from their windows' first layers up.

    Rows of sample s before its start come from `reused` (rows reused.firsts[s] … start-1, re-run
    before for the same batch) and from its clean pass (the rest). Every part must re-run as many
    rows, and reuse as many. `finish` maps the last row's final hidden states (B, hidden) to logits.
    Returns the logits (Σ count, V) of the parts' windows in the order given, the state of the
    re-run rows for a later re-run of the following rows, and the decoder-layer × row evaluations
    spent on each part.
    """
    _check_parts(parts, reused)
    if reused is not None:
        reused = reused.upto([part.start for part in parts])
    packed = len(parts) > 1
    # Windows of every part in the order they join: by first layer, then part.
    order = sorted(
        ((first, s, j) for s, part in enumerate(parts) for j, first in enumerate(part.first_layers)),
        key=lambda e: e[0],
    )
    firsts = [first for first, _, _ in order]
    sample_of = torch.tensor([s for _, s, _ in order], dtype=torch.long)
    shared = [reused.firsts[s] if reused is not None else part.start for s, part in enumerate(parts)]
    prefixes = [_prefixes(part, shared[s], cross_layers, len(layers)) for s, part in enumerate(parts)]
    lowest = firsts[0]
    first_clean = parts[0].clean
    empty = {
        i: _Layer(first_clean.keys[i][:, :, :0], first_clean.values[i][:, :, :0])
        for i in cross_layers
        if i >= lowest
    }
    # Packed samples see different prefixes; layers read only whether there is one (see get_seq_length).
    cache = _RerunCache(reused, empty, min(shared))
    plans = [
        dataclasses.replace(part.plan, offset=part.start, prefix=prefixes[s]) for s, part in enumerate(parts)
    ]
    hidden: torch.Tensor | None = None
    spent = [0] * len(parts)
    stacked: dict[tuple[int, tuple[int, ...]], dict[str, Any]] = {}
    segmented: dict[int, Plan] = {}
    for index in range(lowest, len(layers)):
        active = bisect.bisect_right(firsts, index)
        joined = 0 if hidden is None else hidden.shape[0]
        if active > joined:
            fresh = _joining_rows(parts, sample_of[joined:active].tolist(), index)
            hidden = fresh if hidden is None else torch.cat([hidden, fresh.to(hidden.device)])
        assert hidden is not None
        owners = sample_of[:active]
        counts = torch.bincount(owners, minlength=len(parts)).tolist()
        if packed:
            # Layers mostly get the very same argument objects, and the batch changes only when
            # windows join: stack and split once for each.
            given = tuple(id(v) for part in parts for v in part.clean.layer_arguments[index].values())
            if (active, given) not in stacked:
                stacked[active, given] = stack_rows(_sliced(adapter, parts, index), owners)
            arguments = stacked[active, given]
            if active not in segmented:
                segments = tuple(
                    Segment(torch.nonzero(owners == s).flatten(), _first_elements(plans[s], counts[s]))
                    for s in range(len(parts))
                    if counts[s]
                )
                segmented[active] = Plan(
                    cross_layers=cross_layers, mode=parts[0].plan.mode, segments=segments
                )
            plan = segmented[active]
        else:
            arguments, plan = _sliced(adapter, parts, index)[0], _first_elements(plans[0], active)
        cache_argument = compat.decoder_cache_argument(layers[index])
        with use_plan(plan):
            output = layers[index](hidden, **{cache_argument: cache}, use_cache=True, **arguments)
        if index not in cross_layers and index not in cache.keys:
            raise compat.cache_not_updated(index, cache_argument)
        hidden = output[0] if isinstance(output, tuple) else output
        hidden = _after_layer(adapter, index, hidden, parts, owners)
        for s, part in enumerate(parts):
            spent[s] += counts[s] * (part.end - part.start)
    assert hidden is not None
    logits = finish(hidden[:, -1])
    if packed:  # back to the parts' own order
        position = {(s, j): g for g, (_, s, j) in enumerate(order)}
        back = [position[(s, j)] for s, part in enumerate(parts) for j in range(part.count)]
        logits = logits[torch.tensor(back, device=logits.device)]
    state = RowState(tuple(shared), tuple(part.end for part in parts), cache.keys, cache.values)
    return logits, state, spent


def _check_parts(parts: Sequence[Rows], reused: RowState | None) -> None:
    if not parts:
        raise ValueError("a re-run needs at least one sample's rows")
    for s, part in enumerate(parts):
        if part.start < part.clean.row0:
            raise ValueError(
                f"the clean pass kept hidden states from row {part.clean.row0}, not {part.start}"
            )
        if list(part.first_layers) != sorted(part.first_layers) or not part.first_layers:
            raise ValueError("windows must be ordered by their first layer")
        if reused is not None and not reused.firsts[s] <= part.start <= reused.ends[s]:
            raise ValueError(
                f"reused rows {reused.firsts[s]} … {reused.ends[s] - 1} cannot precede row {part.start}"
            )
    rows = {part.end - part.start for part in parts}
    if len(rows) > 1:
        raise ValueError(f"samples packed into one re-run must re-run as many rows, not {sorted(rows)}")
    if reused is not None and len({part.start - reused.firsts[s] for s, part in enumerate(parts)}) > 1:
        raise ValueError("samples packed into one re-run must reuse as many rows")


def _prefixes(
    part: Rows, shared: int, cross_layers: frozenset[int], n_layers: int
) -> dict[int, PrefixAttention]:
    """Per layer from the part's lowest first layer, its clean keys before the re-run rows (every image
    key of a cross-attention layer)."""
    clean = part.clean
    return {
        i: PrefixKV(clean.keys[i], clean.values[i])
        if i in cross_layers
        else PrefixKV(clean.keys[i][:, :, :shared], clean.values[i][:, :, :shared])
        for i in range(part.first_layers[0], n_layers)
    }


def _sliced(adapter: Adapter, parts: Sequence[Rows], layer: int) -> list[dict[str, Any]]:
    """Each part's clean-pass arguments of decoder layer `layer`, sliced to its rows."""
    return [
        adapter.slice_layer_arguments(part.clean.layer_arguments[layer], part.start, part.end)
        for part in parts
    ]


def _joining_rows(parts: Sequence[Rows], owners: list[int], layer: int) -> torch.Tensor:
    """(len(owners), rows, hidden): the clean input hidden states at `layer` of the re-run rows of each
    joining window, whose sample is `owners[b]`."""
    pieces = []
    for owner, run in itertools.groupby(owners):
        part = parts[owner]
        rows = slice(part.start - part.clean.row0, part.end - part.clean.row0)
        pieces.append(part.clean.hidden[layer][:, rows].expand(len(list(run)), -1, -1))
    return pieces[0] if len(pieces) == 1 else torch.cat(pieces)


def _after_layer(
    adapter: Adapter, layer: int, hidden: torch.Tensor, parts: Sequence[Rows], owners: torch.Tensor
) -> torch.Tensor:
    """`Adapter.after_layer` for each sample's rows of the batch."""
    if len(parts) == 1:
        part = parts[0]
        return adapter.after_layer(layer, hidden, part.start, part.end, part.clean.extras)
    if type(adapter).after_layer is Adapter.after_layer:  # adds nothing: no need to split the batch
        return hidden
    out = hidden
    for s, part in enumerate(parts):
        index = torch.nonzero(owners == s).flatten().to(hidden.device)
        if len(index) == 0:
            continue
        mine = hidden.index_select(0, index)
        added = adapter.after_layer(layer, mine, part.start, part.end, part.clean.extras)
        if added is not mine:
            out = out.index_copy(0, index, added)
    return out
