"""Re-run a few rows of the decoder from a chosen layer on top of one clean pass.

A knockout confined to layers >= l leaves every hidden state below layer l exactly as in the clean
pass, and leaves the keys and values of every position before the first row it can change as they
were. So a blocked run only needs, per window, the rows from that first row on, from layer l on:
they start from the clean pass' hidden states at layer l and attend to the clean pass' cached keys.

`clean_pass` runs the model once and keeps what a re-run needs: the decoder layers' cached keys and
values, the input hidden states of every layer for the rows that may be re-run, and the arguments
the model gave its decoder layers (masks, rotary embeddings, cross-attention masks), which a re-run
slices to its rows. `rerun` then drives the decoder layers itself for a batch of windows that start
at different layers: the batch grows as it goes up, a window joining at its own first layer with the
clean hidden states there, and the clean keys are shared by the whole batch without being copied
(`Plan.prefix`).
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
from vistrace.hook.traced import require_reached
from vistrace.knockout.attention import PrefixKV

# Arguments a re-run passes itself (besides the cache, under the name the layer takes it).
_REPLACED_ARGUMENTS = {"hidden_states", "use_cache"}


@dataclass
class CleanPass:
    """What a re-run keeps of the clean pass over positions 0 … total-1 (batch 1).

    `keys`/`values`: per decoder layer, (1, H_kv, K, D) cached keys/values (K = total for
    self-attention layers, the image features for cross-attention layers). `hidden`: per layer, the
    layer's input hidden states (1, total - row0, hidden) of positions row0 … total-1.
    `layer_arguments`: per layer, the keyword arguments the model passed it (its cache left out).
    `logits`: (1, total, V). `extras`: what the adapter keeps of the decoder's own arguments
    (`Adapter.decoder_extras`), for what the model adds between layers outside attention.
    """

    keys: list[torch.Tensor]
    values: list[torch.Tensor]
    hidden: list[torch.Tensor]
    row0: int
    layer_arguments: list[dict[str, Any]]
    logits: torch.Tensor
    extras: Any = None


def clean_pass(
    adapter: Adapter,
    model: Any,
    forward: Callable[[], Any],
    row0: int,
) -> CleanPass:
    """Run `forward()` (the model over the whole sequence, with a cache) and keep what re-runs need.

    Probes on the way that the cache comes back where and as expected and that `finish` turns the last
    layer's output into the model's logits (`vistrace.compat.TransformersContractError` if not).
    """
    layers = compat.decoder_layers(model)
    finish = adapter.finisher(model)
    hidden: dict[int, torch.Tensor] = {}
    arguments: dict[int, dict[str, Any]] = {}
    last_output: list[torch.Tensor] = []
    decoder_arguments: dict[str, Any] = {}

    def grabber(index: int) -> Callable[..., None]:
        def grab(module: torch.nn.Module, args: tuple[Any, ...], kwargs: dict[str, Any]) -> None:
            if len(args) > 1:
                raise NotImplementedError(
                    "decoder layers called with positional arguments beyond the hidden states"
                )
            states = args[0] if args else kwargs["hidden_states"]
            hidden[index] = states[:, row0:].detach().clone()
            own = compat.decoder_cache_argument(module)
            arguments[index] = _layer_arguments(kwargs, own)

        return grab

    def keep_last(module: torch.nn.Module, args: tuple[Any, ...], output: Any) -> None:
        states = output[0] if isinstance(output, tuple) else output
        last_output.append(states[:, -1].detach())

    def keep_decoder_arguments(
        module: torch.nn.Module, args: tuple[Any, ...], kwargs: dict[str, Any]
    ) -> None:
        decoder_arguments.update(kwargs)

    # prepend: see the arguments as the model passes them, before any adapter hook adjusts them.
    handles = [
        layer.register_forward_pre_hook(grabber(i), with_kwargs=True, prepend=True)
        for i, layer in enumerate(layers)
    ]
    handles.append(layers[-1].register_forward_hook(keep_last))
    handles.append(model.get_decoder().register_forward_pre_hook(keep_decoder_arguments, with_kwargs=True))
    try:
        output = forward()
    finally:
        for handle in handles:
            handle.remove()
    require_reached()  # before reading the cache of a layer that bypassed the seam
    if len(hidden) != len(layers):
        raise RuntimeError(f"the clean pass ran {len(hidden)} of {len(layers)} decoder layers")
    compat.check_finisher(output.logits[:, -1], finish(last_output[-1]))
    keys, values = compat.cache_tensors(
        compat.output_cache(output),
        len(layers),
        sequence_length=row0 + hidden[0].shape[1],
        cross_layers=adapter.cross_layers(model),
    )
    return CleanPass(
        keys,
        values,
        [hidden[i] for i in range(len(layers))],
        row0,
        [arguments[i] for i in range(len(layers))],
        output.logits,
        adapter.decoder_extras(decoder_arguments),
    )


def _layer_arguments(kwargs: dict[str, Any], cache_argument: str) -> dict[str, Any]:
    """The keyword arguments a decoder layer got, less those a re-run passes itself; a cache under any
    other name than the one the layer's signature declares is a convention this module does not know."""
    kept = {}
    for name, value in kwargs.items():
        if name in _REPLACED_ARGUMENTS or name == cache_argument:
            continue
        if compat.is_cache(value):
            raise compat.unknown_layer_argument(
                name, f"a cache object, but the layer takes its cache as `{cache_argument}`"
            )
        kept[name] = value
    return kept


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
    for index in range(lowest, len(layers)):
        active = bisect.bisect_right(firsts, index)
        joined = 0 if hidden is None else hidden.shape[0]
        if active > joined:
            fresh = _joining_rows(parts, sample_of[joined:active].tolist(), index)
            hidden = fresh if hidden is None else torch.cat([hidden, fresh.to(hidden.device)])
        assert hidden is not None
        owners = sample_of[:active]
        counts = torch.bincount(owners, minlength=len(parts)).tolist()
        sliced = [
            adapter.slice_layer_arguments(part.clean.layer_arguments[index], part.start, part.end)
            for part in parts
        ]
        if packed:
            arguments = stack_rows(sliced, owners)
            segments = tuple(
                Segment(torch.nonzero(owners == s).flatten(), _first_elements(plans[s], counts[s]))
                for s in range(len(parts))
                if counts[s]
            )
            plan = Plan(cross_layers=cross_layers, mode=parts[0].plan.mode, segments=segments)
        else:
            arguments, plan = sliced[0], _first_elements(plans[0], active)
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
