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
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import torch

from vistrace import compat
from vistrace.adapters import Adapter
from vistrace.hook.plan import Knockout, Plan, PrefixAttention, use_plan
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
    """Keys and values of rows `first` … `end`-1 of a batch of windows, per decoder layer (the batch
    at a layer is the windows that had started by then); rows before `first` are the clean ones."""

    first: int
    end: int
    keys: dict[int, torch.Tensor]
    values: dict[int, torch.Tensor]

    def upto(self, end: int) -> RowState:
        """The rows before `end`."""
        if end == self.end:
            return self
        n = end - self.first
        keys = {i: k[:, :, :n] for i, k in self.keys.items()}
        return RowState(self.first, end, keys, {i: v[:, :, :n] for i, v in self.values.items()})


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


def rerun(
    adapter: Adapter,
    layers: Sequence[torch.nn.Module],
    finish: Callable[[torch.Tensor], torch.Tensor],
    clean: CleanPass,
    cross_layers: frozenset[int],
    *,
    start: int,
    end: int,
    first_layers: Sequence[int],
    plan: Plan,
    reused: RowState | None = None,
) -> tuple[torch.Tensor, RowState, int]:
    """Re-run rows `start` … `end`-1 for a batch of windows; window b runs layers first_layers[b] and up.

    `first_layers` must be ascending; `plan` holds the batch's knockout (full roles, offset ignored).
    Rows before `start` come from `reused` (rows reused.first … start-1, re-run before for the same
    batch) and from the clean pass (the rest). `finish` maps the last row's final hidden states
    (B, hidden) to logits. Returns the logits (B, V), the state of rows first … end-1 for a later
    re-run of the following rows, and the decoder-layer × row evaluations spent.
    """
    if reused is not None:
        if not reused.first <= start <= reused.end:
            raise ValueError(f"reused rows {reused.first} … {reused.end - 1} cannot precede row {start}")
        reused = reused.upto(start)
    if start < clean.row0:
        raise ValueError(f"the clean pass kept hidden states from row {clean.row0}, not {start}")
    if list(first_layers) != sorted(first_layers):
        raise ValueError("windows must be ordered by their first layer")
    shared = reused.first if reused is not None else start
    prefix: dict[int, PrefixAttention] = {
        i: PrefixKV(clean.keys[i], clean.values[i])
        if i in cross_layers
        else PrefixKV(clean.keys[i][:, :, :shared], clean.values[i][:, :, :shared])
        for i in range(first_layers[0], len(layers))
    }
    empty = {
        i: _Layer(clean.keys[i][:, :, :0], clean.values[i][:, :, :0])
        for i in cross_layers
        if i >= first_layers[0]
    }
    cache = _RerunCache(reused, empty, shared)
    plan = dataclasses.replace(plan, offset=start, prefix=prefix)
    hidden: torch.Tensor | None = None
    spent = 0
    rows = slice(start - clean.row0, end - clean.row0)
    for index in range(first_layers[0], len(layers)):
        active = bisect.bisect_right(first_layers, index)
        joined = 0 if hidden is None else hidden.shape[0]
        if active > joined:
            fresh = clean.hidden[index][:, rows].expand(active - joined, -1, -1)
            hidden = fresh if hidden is None else torch.cat([hidden, fresh.to(hidden.device)])
        assert hidden is not None
        arguments = adapter.slice_layer_arguments(clean.layer_arguments[index], start, end)
        cache_argument = compat.decoder_cache_argument(layers[index])
        with use_plan(_first_elements(plan, active)):
            output = layers[index](hidden, **{cache_argument: cache}, use_cache=True, **arguments)
        if index not in cross_layers and index not in cache.keys:
            raise compat.cache_not_updated(index, cache_argument)
        hidden = output[0] if isinstance(output, tuple) else output
        hidden = adapter.after_layer(index, hidden, start, end, clean.extras)
        spent += active * (end - start)
    assert hidden is not None
    logits = finish(hidden[:, -1])
    first = reused.first if reused is not None else start
    return logits, RowState(first, end, cache.keys, cache.values), spent
