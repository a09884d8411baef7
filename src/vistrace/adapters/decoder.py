"""Defaults an adapter uses for how its language model is driven: fed answer tokens, rows of a re-run.

The defaults serve Llama-style backbones (LLaVA's Vicuna, Qwen-VL's text models); a family with other
per-token inputs or decoder-layer arguments names them in its adapter (e.g. Mllama's cross-attention
mask) and these functions slice or extend them by the dimension it gives.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import torch

from vistrace import compat

# Decoder-layer arguments of Llama-style layers that are indexed by query position: name → dimension.
LLAMA_ROW_ARGUMENTS: Mapping[str, int] = {"position_ids": -1}


def extend_inputs(
    inputs: Mapping[str, torch.Tensor],
    input_ids: torch.Tensor,
    per_token: Mapping[str, Any],
    family: str,
) -> dict[str, torch.Tensor]:
    """Processor `inputs` (batch 1, prompt of P tokens) for `input_ids` (1, S) = the prompt's ids and
    then S - P fed answer tokens (or a prefix of the prompt when S < P).

    `attention_mask` becomes all ones; each input named in `per_token` is extended along dimension 1
    with its value for a text token: a callable `(tensor, extra) -> tensor` or a fill value. Any other
    input of shape (1, P, …) is a per-token input this family does not know how to extend: an error,
    never silently left one answer token short.
    """
    prompt_len = int(inputs["input_ids"].shape[1])
    length = int(input_ids.shape[1])
    extended: dict[str, torch.Tensor] = {}
    for name, value in inputs.items():
        if name == "input_ids":
            extended[name] = input_ids
        elif name == "attention_mask":
            extended[name] = torch.ones_like(input_ids)
        elif name in per_token:
            extended[name] = _extend(value, length, per_token[name])
        elif value.dim() >= 2 and value.shape[0] == 1 and value.shape[1] == prompt_len:
            raise ValueError(
                f"{family}: processor input {name!r} {tuple(value.shape)} has one entry per token, and the "
                "adapter does not say how to extend it with answer tokens"
            )
        else:
            extended[name] = value
    return extended


def _extend(value: torch.Tensor, length: int, rule: Any) -> torch.Tensor:
    extra = length - int(value.shape[1])
    if extra <= 0:
        return value[:, :length]
    if callable(rule):
        return rule(value, extra)
    padding = value.new_full((value.shape[0], extra, *value.shape[2:]), rule)
    return torch.cat([value, padding], dim=1)


def repeat_last_row(value: torch.Tensor, extra: int) -> torch.Tensor:
    """`value` (1, P, …) extended by `extra` copies of its last row (the new token sees what the last
    prompt token sees, e.g. Mllama's cross-attention mask)."""
    return torch.cat([value, value[:, -1:].expand(-1, extra, *value.shape[2:])], dim=1)


def slice_rows(
    arguments: Mapping[str, Any],
    start: int,
    end: int,
    row_arguments: Mapping[str, int],
    cached_arguments: frozenset[str] = frozenset(),
) -> dict[str, Any]:
    """A clean pass' decoder-layer keyword `arguments` for query rows `start` … `end`-1 (keys 0 … end-1).

    `attention_mask` (4-d additive), `position_embeddings` (tensors (B, S, …)), `cache_position` and
    the arguments of `row_arguments` (name → the dimension indexed by position) are sliced; those of
    `cached_arguments` become None (their keys come from the cache). Any other tensor stops the re-run
    with `vistrace.compat.TransformersContractError` naming it.
    """
    out: dict[str, Any] = {}
    for name, value in arguments.items():
        if name in cached_arguments:
            out[name] = None
        elif name == "attention_mask":
            # A boolean mask (sdpa's, when the seam's mask function is not registered) would be added
            # to the scores as 0 / 1: the rows a re-run computes would see every key.
            if not isinstance(value, torch.Tensor) or value.dim() != 4 or not value.is_floating_point():
                got = (
                    f"{value.dim()}-d {str(value.dtype).removeprefix('torch.')}"
                    if isinstance(value, torch.Tensor)
                    else type(value).__name__
                )
                raise compat.unknown_layer_argument(
                    name, f"a re-run needs a 4-d additive attention mask, got {got}"
                )
            out[name] = value[:, :, start:end, :end]
        elif name == "position_embeddings" and value is not None:
            out[name] = tuple(t[:, start:end] for t in value)
        elif name in row_arguments and isinstance(value, torch.Tensor):
            out[name] = value.narrow(row_arguments[name], start, end - start)
        elif name == "cache_position" and isinstance(value, torch.Tensor):
            out[name] = value[start:end]
        elif isinstance(value, torch.Tensor):
            raise compat.unknown_layer_argument(name, "a tensor a re-run does not know how to slice to rows")
        else:
            out[name] = value
    return out


# Arguments that are additive masks over the keys: samples packed into one call may have different
# numbers of keys, and a mask is padded on the right (the seam cuts each sample's to its own keys).
_KEY_MASKS = frozenset({"attention_mask", "cross_attention_mask"})


def stack_rows(per_sample: Sequence[Mapping[str, Any]], owners: torch.Tensor) -> dict[str, Any]:
    """Decoder-layer arguments of one call that packs several samples' re-run rows: batch element b
    gets those of sample `owners[b]` ((B,) long). `per_sample` are each sample's arguments sliced to
    its rows (`slice_rows`, batch 1, as many rows each).

    Tensors, also inside `position_embeddings`, are stacked along dimension 0; the key masks
    (`attention_mask`, `cross_attention_mask`) are first padded on the right with the dtype's lowest
    value to the longest. Any other argument must be the same for every sample. Anything else (a
    tensor of batch other than 1, shapes that differ) stops the run with
    `vistrace.compat.TransformersContractError` naming the argument.
    """
    names = list(per_sample[0])
    if any(list(arguments) != names for arguments in per_sample):
        raise compat.unknown_layer_argument(names[0], "samples packed into one call got different arguments")
    out: dict[str, Any] = {}
    for name in names:
        values = [arguments[name] for arguments in per_sample]
        first = values[0]
        if isinstance(first, torch.Tensor):
            out[name] = _stack(name, values, owners)
        elif name == "position_embeddings" and isinstance(first, tuple):
            out[name] = tuple(_stack(name, list(parts), owners) for parts in zip(*values, strict=True))
        elif all(value is first or value == first for value in values):
            out[name] = first
        else:
            raise compat.unknown_layer_argument(name, "differs between samples packed into one call")
    return out


def _stack(name: str, values: Sequence[Any], owners: torch.Tensor) -> torch.Tensor:
    if not all(isinstance(v, torch.Tensor) and v.dim() >= 1 and v.shape[0] == 1 for v in values):
        raise compat.unknown_layer_argument(
            name, "packing samples needs one tensor of batch 1 per sample (turn packing off: --pack-memory 0)"
        )
    if name in _KEY_MASKS:
        longest = max(int(v.shape[-1]) for v in values)
        values = [
            torch.nn.functional.pad(v, (0, longest - v.shape[-1]), value=torch.finfo(v.dtype).min)
            if v.shape[-1] < longest
            else v
            for v in values
        ]
    if len({tuple(v.shape) for v in values}) > 1:
        raise compat.unknown_layer_argument(
            name, "its shape differs between samples packed into one call (turn packing off: --pack-memory 0)"
        )
    stacked = torch.cat(list(values))
    return stacked.index_select(0, owners.to(stacked.device))
