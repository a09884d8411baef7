"""Every contract vistrace has with transformers beyond the attention function itself, each probed.

vistrace runs on unmodified transformers, so every internal it relies on is a place where a release
can break it, loudly or with silently different numbers. Each such contract lives here with a probe
that detects the installed convention from the code or objects themselves (never from a version
number). A probe that meets a convention it does not know raises `TransformersContractError`, one
line naming the contract and the installed transformers version; no probe falls back to a guess.

The contracts (`vistrace check` reports each; docs/compatibility.md says what breaks without it):

- attention registry: `AttentionInterface.register(name, fn)` makes `fn` the attention of every
  layer whose config says `_attn_implementation == name`;
- mask registry: `ALL_MASK_ATTENTION_FUNCTIONS.register(name, eager_mask)` gives the seam an
  explicit 4-d additive causal mask;
- sdpa attention: `integrations.sdpa_attention.sdpa_attention_forward` and `repeat_kv`, the calls
  the seam hands an untouched call to;
- text attention setting: `set_attn_implementation({"text_config": name})` switches the language
  model only and is read back from `text_config._attn_implementation`;
- decoder layers: `get_decoder().layers`, `.norm` and `get_output_embeddings()`;
- decoder cache argument: the name under which a decoder layer takes its KV cache (`cache` since
  5.24, `past_key_values` before);
- model output cache: the output field that holds the cache (`cache` or `past_key_values`);
- cache layout: `cache.layers[i].keys` / `.values`, (B, H_kv, K, D) per decoder layer;
- cache update: a self-attention layer stores its new keys through `cache.update(k, v, layer_idx,
  …)` on the cache it was given (checked on every re-run);
- decoder-layer arguments: the keyword arguments a model passes its decoder layers (see
  `vistrace.knockout.rerun`), the attention mask among them a 4-d additive tensor;
- final norm and head: `head(norm(h))` of the last layer's output reproduces the model's logits;
- Mllama vision features: which encoder states `intermediate_layers_indices` picks
  (`vistrace.adapters.mllama_vision`);
- Auto classes: `AutoModelForImageTextToText` and `AutoProcessor`.
"""

from __future__ import annotations

import functools
import inspect
from collections.abc import Callable, Collection
from dataclasses import dataclass
from typing import Any

import torch
import transformers

KNOWN_CACHE_ARGUMENTS = ("cache", "past_key_values")


class TransformersContractError(RuntimeError):
    """The installed transformers breaks a contract vistrace relies on; the message is one line."""

    def __init__(self, contract: str, detail: str):
        super().__init__(
            f"transformers {transformers.__version__}: contract '{contract}' not met: {detail} "
            "(see docs/compatibility.md; supported: the range pinned in vistrace's requirements)"
        )
        self.contract = contract


class MissingCacheMethodError(TransformersContractError, AttributeError):
    """A decoder layer asked a re-run's cache for something it does not provide (an AttributeError, so
    that `hasattr` probes in transformers keep working)."""

    def __init__(self, name: str):
        super().__init__("cache interface", f"a decoder layer used cache.{name}, which a re-run lacks")


@dataclass(frozen=True)
class ContractStatus:
    """One contract as `vistrace check` reports it: what the probe found, or why it failed."""

    name: str
    ok: bool
    detail: str


# ----- attention and mask registries -------------------------------------------------------------


def sdpa_functions() -> tuple[Callable[..., Any], Callable[..., torch.Tensor]]:
    """(`sdpa_attention_forward`, `repeat_kv`) of the installed transformers."""
    try:
        from transformers.integrations.sdpa_attention import repeat_kv, sdpa_attention_forward
    except ImportError as error:
        raise TransformersContractError("sdpa attention", str(error)) from None
    return sdpa_attention_forward, repeat_kv


def register_attention(name: str, function: Callable[..., Any]) -> None:
    """Register `function` as attention implementation `name`, and the explicit causal mask with it,
    unless something is registered under `name` already (idempotent); check both are found under
    `name` afterwards."""
    try:
        from transformers import AttentionInterface
        from transformers.masking_utils import ALL_MASK_ATTENTION_FUNCTIONS, eager_mask
    except ImportError as error:
        raise TransformersContractError("attention registry", str(error)) from None
    attention = AttentionInterface()
    if name not in attention:
        AttentionInterface.register(name, function)
        if attention.get(name) is not function:
            raise TransformersContractError("attention registry", f"{name!r} not found after register()")
    # eager_mask always materialises the causal mask: with sdpa's mask the causal pattern can arrive as
    # None, and an explicit computation would silently lose causality.
    if name not in ALL_MASK_ATTENTION_FUNCTIONS:
        ALL_MASK_ATTENTION_FUNCTIONS.register(name, eager_mask)
        if ALL_MASK_ATTENTION_FUNCTIONS.get(name) is not eager_mask:
            raise TransformersContractError("mask registry", f"{name!r} not found after register()")


@functools.cache
def probe_sdpa() -> str:
    """Call the installed sdpa attention on a small grouped-query input and compare it with softmax
    attention written out; returns what was checked."""
    sdpa, repeat_kv = sdpa_functions()
    generator = torch.Generator().manual_seed(0)
    query = torch.randn(1, 4, 3, 8, generator=generator)
    key, value = torch.randn(2, 1, 2, 5, 8, generator=generator)
    mask = torch.zeros(1, 1, 3, 5)
    mask[..., -1] = torch.finfo(torch.float32).min
    module = torch.nn.Module()
    module.is_causal = False  # type: ignore[assignment]
    module.num_key_value_groups = 2  # type: ignore[assignment]
    try:
        output, _ = sdpa(module, query, key, value, mask, dropout=0.0, scaling=0.5)
        expanded_key, expanded_value = repeat_kv(key, 2), repeat_kv(value, 2)
    except Exception as error:
        raise TransformersContractError("sdpa attention", f"{type(error).__name__}: {error}") from None
    weights = torch.softmax(query @ expanded_key.transpose(2, 3) * 0.5 + mask, dim=-1)
    expected = (weights @ expanded_value).transpose(1, 2)
    if tuple(output.shape) != tuple(expected.shape) or not torch.allclose(output, expected, atol=1e-5):
        raise TransformersContractError(
            "sdpa attention",
            f"sdpa_attention_forward returned {tuple(output.shape)}, not (B, Q, H, D) softmax attention",
        )
    return "sdpa_attention_forward → (B, Q, H, D), repeat_kv"


# ----- attention implementation of the language model --------------------------------------------


def text_config(model: Any) -> Any:
    """The language model's config (`text_config` of a composite model, else the config)."""
    config = model.config
    return getattr(config, "text_config", None) or config


def text_attention(model: Any) -> str | None:
    """The attention implementation the language model's layers look up."""
    config = text_config(model)
    if not hasattr(config, "_attn_implementation"):
        raise TransformersContractError(
            "text attention setting", f"{type(config).__name__} has no _attn_implementation"
        )
    value = config._attn_implementation
    return None if value is None else str(value)


def set_text_attention(model: Any, name: str | None) -> None:
    """Route the language model's (not the vision tower's) attention through `name`, and check that
    its config reads back `name` and the vision tower's setting is unchanged."""
    config = text_config(model)
    vision = getattr(model.config, "vision_config", None)
    vision_before = getattr(vision, "_attn_implementation", None)
    if config is model.config:
        model.set_attn_implementation(name)
    else:
        model.set_attn_implementation({"text_config": name})
    found = text_attention(model)
    if name is not None and found != name:
        raise TransformersContractError(
            "text attention setting",
            f"set_attn_implementation left text_config._attn_implementation = {found!r}, not {name!r}",
        )
    if config is not model.config and getattr(vision, "_attn_implementation", None) != vision_before:
        raise TransformersContractError(
            "text attention setting", "set_attn_implementation({'text_config': …}) changed the vision tower"
        )


# ----- decoder layers and their cache -----------------------------------------------------------


def decoder_layers(model: Any) -> list[torch.nn.Module]:
    """The language model's decoder layers, in `layer_idx` order."""
    decoder = model.get_decoder() if hasattr(model, "get_decoder") else None
    layers = getattr(decoder, "layers", None)
    if not isinstance(layers, torch.nn.ModuleList):
        raise TransformersContractError(
            "decoder layers", f"{type(model).__name__}.get_decoder() has no ModuleList `layers`"
        )
    return list(layers)


def finisher(model: Any) -> Callable[[torch.Tensor], torch.Tensor]:
    """Final norm and LM head: (B, hidden) last-layer hidden states → (B, V) logits."""
    decoder = model.get_decoder()
    norm = getattr(decoder, "norm", None)
    head = model.get_output_embeddings()
    if not isinstance(norm, torch.nn.Module) or not isinstance(head, torch.nn.Module):
        raise TransformersContractError(
            "final norm and head", f"{type(decoder).__name__} has no `norm` or the model no output embeddings"
        )

    def finish(hidden: torch.Tensor) -> torch.Tensor:
        return head(norm(hidden))

    return finish


def check_finisher(logits: torch.Tensor, recomputed: torch.Tensor) -> None:
    """Raise unless `recomputed` (B, V), the finisher on the last layer's output, matches the model's
    own `logits` (B, V) to the precision of their dtype."""
    tolerance = 1e-4 if logits.dtype == torch.float32 else 2e-2
    scale = float(logits.float().abs().max()) + 1.0
    difference = float((logits.float() - recomputed.float()).abs().max())
    if difference > tolerance * scale:
        raise TransformersContractError(
            "final norm and head",
            f"head(norm(last hidden state)) differs from the model's logits by {difference:.3g}",
        )


@functools.cache
def _cache_argument_of(function: Callable[..., Any], contract: str = "decoder cache argument") -> str:
    try:
        parameters = inspect.signature(function).parameters
    except (TypeError, ValueError) as error:
        raise TransformersContractError(contract, f"no signature: {error}") from None
    found = [name for name in KNOWN_CACHE_ARGUMENTS if name in parameters]
    if len(found) != 1:
        names = ", ".join(p for p in parameters if p != "self")
        raise TransformersContractError(
            contract,
            f"{getattr(function, '__qualname__', function)}({names}) takes "
            f"{'none' if not found else 'more than one'} of {', '.join(KNOWN_CACHE_ARGUMENTS)}",
        )
    return found[0]


def decoder_cache_argument(layer: torch.nn.Module) -> str:
    """The keyword under which `layer.forward` takes its KV cache."""
    return _cache_argument_of(getattr(layer.forward, "__func__", layer.forward))


def model_cache_argument(model: torch.nn.Module) -> str:
    """The keyword under which `model.forward` takes a KV cache to continue from."""
    return _cache_argument_of(getattr(model.forward, "__func__", model.forward), "model cache argument")


def full_cache(model: torch.nn.Module) -> dict[str, Any]:
    """A fresh config-less `DynamicCache` under the keyword `model.forward` (and `generate`) takes it:
    every layer keeps every key. A cache built from the config keeps only the last `sliding_window - 1`
    keys of a sliding-window layer (Gemma 3), which re-runs and captures (keys by position) cannot use."""
    from transformers.cache_utils import DynamicCache

    return {model_cache_argument(model): DynamicCache()}


def output_cache_field(output: Any) -> str:
    """The field of a model output (run with `use_cache=True`) that holds the cache."""
    keys = set(output.keys()) if hasattr(output, "keys") else set()
    found = [name for name in KNOWN_CACHE_ARGUMENTS if name in keys]
    if len(found) != 1:
        raise TransformersContractError(
            "model output cache",
            f"{type(output).__name__} holds {'none' if not found else 'both'} of "
            f"{', '.join(KNOWN_CACHE_ARGUMENTS)} (fields: {', '.join(sorted(keys))})",
        )
    return found[0]


def output_cache(output: Any) -> Any:
    """The cache a forward with `use_cache=True` returned (the `cache` or `past_key_values` field)."""
    return output[output_cache_field(output)]


def cache_tensors(
    cache: Any,
    n_layers: int,
    *,
    sequence_length: int | None = None,
    cross_layers: Collection[int] = (),
) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
    """Per decoder layer, the cached keys and values (1, H_kv, K, D) of a cache object.

    With `sequence_length`, every self-attention layer (those not in `cross_layers`) must hold that
    many keys: a cache that drops keys (a sliding-window layer of a cache built from the config) is
    refused rather than re-run from."""
    layers = getattr(cache, "layers", None)
    if layers is None or len(layers) < n_layers:
        raise TransformersContractError(
            "cache layout", f"{type(cache).__name__} has no `layers` with one entry per decoder layer"
        )
    keys, values = [], []
    for index in range(n_layers):
        layer = layers[index]
        key, value = getattr(layer, "keys", None), getattr(layer, "values", None)
        if not isinstance(key, torch.Tensor) or not isinstance(value, torch.Tensor) or key.dim() != 4:
            raise TransformersContractError(
                "cache layout",
                f"{type(layer).__name__} of layer {index} has no 4-d tensors `keys` / `values`",
            )
        if sequence_length is not None and index not in cross_layers and key.shape[-2] != sequence_length:
            raise TransformersContractError(
                "cache layout",
                f"layer {index} of the {type(cache).__name__} holds {key.shape[-2]} keys for "
                f"{sequence_length} positions ({type(layer).__name__}); a re-run needs every key",
            )
        keys.append(key)
        values.append(value)
    return keys, values


def is_cache(value: Any) -> bool:
    """Whether `value` is a transformers cache object."""
    from transformers.cache_utils import Cache

    return isinstance(value, Cache)


def cache_not_updated(layer: int, argument: str) -> TransformersContractError:
    """The error of a decoder layer that did not store its keys through the cache it was given."""
    return TransformersContractError(
        "cache update",
        f"decoder layer {layer} did not call update() on the cache passed as `{argument}`",
    )


def unknown_layer_argument(name: str, detail: str) -> TransformersContractError:
    """The error of a decoder-layer argument a re-run cannot slice to its rows."""
    return TransformersContractError("decoder-layer arguments", f"{name!r}: {detail}")


# ----- the whole table ---------------------------------------------------------------------------


def auto_classes() -> tuple[Any, Any]:
    """(`AutoModelForImageTextToText`, `AutoProcessor`)."""
    try:
        from transformers import AutoModelForImageTextToText, AutoProcessor
    except ImportError as error:
        raise TransformersContractError("Auto classes", str(error)) from None
    return AutoModelForImageTextToText, AutoProcessor


def static_contracts(model: Any, seam_name: str, seam: Callable[..., Any]) -> list[ContractStatus]:
    """The contracts that can be probed without running `model`, each as a `ContractStatus`; the
    seam `seam` is registered under `seam_name` on the way."""

    def registries() -> str:
        register_attention(seam_name, seam)
        return f"{seam_name!r} attention and eager_mask registered and found"

    def setting() -> str:
        previous = text_attention(model)
        try:
            set_text_attention(model, seam_name)
        finally:
            set_text_attention(model, previous)
        return "set_attn_implementation({'text_config': …}) → text_config._attn_implementation"

    def layers() -> str:
        found = decoder_layers(model)
        finisher(model)
        return f"{len(found)} decoder layers, norm and head found"

    def cache_argument() -> str:
        names = {}
        for layer in decoder_layers(model):
            names[type(layer).__name__] = decoder_cache_argument(layer)
        return ", ".join(f"{cls}: `{name}`" for cls, name in names.items())

    def autos() -> str:
        auto_classes()
        return "AutoModelForImageTextToText, AutoProcessor"

    probes: list[tuple[str, Callable[[], str]]] = [
        ("attention and mask registries", registries),
        ("sdpa attention", probe_sdpa),
        ("text attention setting", setting),
        ("decoder layers, norm and head", layers),
        ("decoder cache argument", cache_argument),
        ("Auto classes", autos),
    ]
    return [_status(name, probe) for name, probe in probes]


def _status(name: str, probe: Callable[[], str]) -> ContractStatus:
    try:
        return ContractStatus(name, True, probe())
    except TransformersContractError as error:
        return ContractStatus(name, False, str(error))


def require_static_contracts(model: Any) -> None:
    """Raise the first broken static contract of `model` (`TransformersContractError`)."""
    for layer in decoder_layers(model):
        decoder_cache_argument(layer)
    finisher(model)
    probe_sdpa()
