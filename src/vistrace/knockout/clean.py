"""The clean pass a fast knockout re-runs rows on top of: the model run once over prompt + answer,
keeping the decoder layers' cached keys and values, the input hidden states of every layer for the
rows that may be re-run, and the arguments the model gave its decoder layers (masks, rotary
embeddings, cross-attention masks), which a re-run slices to its rows (`vistrace.knockout.rerun`).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch

from vistrace import compat
from vistrace.adapters import Adapter
from vistrace.hook.traced import require_reached

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
