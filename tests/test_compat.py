"""The contracts with transformers: each probe finds the installed convention, and a broken one stops
`vistrace check` and a knockout with one line naming it."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import torch
from typer.testing import CliRunner

from vistrace import compat
from vistrace.cli import app
from vistrace.knockout.sweep import KnockoutRunner, Pathway
from vistrace.models.loading import LoadedModel
from vistrace.models.tiny import FAMILIES

from .conftest import scene_image

pytestmark = [pytest.mark.integration, pytest.mark.contract]


def _self_attention_layer(loaded: LoadedModel) -> type[torch.nn.Module]:
    """The class of the language model's first self-attention decoder layer."""
    cross = loaded.adapter.cross_layers(loaded.model)
    layers = compat.decoder_layers(loaded.model)
    return type(next(layer for i, layer in enumerate(layers) if i not in cross))


def test_cache_argument_is_read_from_the_signature() -> None:
    def new(self: Any, hidden_states: Any, cache: Any = None, **kwargs: Any) -> None: ...
    def old(self: Any, hidden_states: Any, past_key_values: Any = None, **kwargs: Any) -> None: ...
    def unknown(self: Any, hidden_states: Any, kv_store: Any = None, **kwargs: Any) -> None: ...
    def both(self: Any, hidden_states: Any, cache: Any = None, past_key_values: Any = None) -> None: ...

    assert compat._cache_argument_of(new) == "cache"
    assert compat._cache_argument_of(old) == "past_key_values"
    for broken in (unknown, both):
        with pytest.raises(compat.TransformersContractError, match="decoder cache argument"):
            compat._cache_argument_of(broken)


def test_the_installed_layers_declare_a_known_cache_argument(tiny_models: dict[str, LoadedModel]) -> None:
    for loaded in tiny_models.values():
        for layer in compat.decoder_layers(loaded.model):
            assert compat.decoder_cache_argument(layer) in compat.KNOWN_CACHE_ARGUMENTS


def test_output_cache_field_is_found_or_refused(tiny_models: dict[str, LoadedModel]) -> None:
    loaded = tiny_models["llava"]
    ids = torch.tensor([[1, 5, 6, 7]])
    with torch.no_grad():
        output = loaded.model.get_decoder()(input_ids=ids, use_cache=True)
    field = compat.output_cache_field(output)
    keys, values = compat.cache_tensors(output[field], loaded.adapter.num_layers(loaded.model))
    assert keys[0].shape[2] == values[0].shape[2] == 4
    with pytest.raises(compat.TransformersContractError, match="model output cache"):
        compat.output_cache_field({"last_hidden_state": output.last_hidden_state})
    with pytest.raises(compat.TransformersContractError, match="cache layout"):
        compat.cache_tensors(object(), 2)


def test_the_sdpa_probe_passes_and_a_wrong_sdpa_is_named(monkeypatch: pytest.MonkeyPatch) -> None:
    assert "sdpa_attention_forward" in compat.probe_sdpa()
    sdpa, repeat_kv = compat.sdpa_functions()

    def transposed(*args: Any, **kwargs: Any) -> tuple[torch.Tensor, Any]:
        output, weights = sdpa(*args, **kwargs)
        return output.transpose(1, 2), weights  # (B, H, Q, D): the layout of an older convention

    monkeypatch.setattr(compat, "sdpa_functions", lambda: (transposed, repeat_kv))
    compat.probe_sdpa.cache_clear()
    try:
        with pytest.raises(compat.TransformersContractError, match="sdpa attention"):
            compat.probe_sdpa()
    finally:
        compat.probe_sdpa.cache_clear()


def test_the_error_is_one_line_naming_contract_and_version() -> None:
    error = compat.TransformersContractError("decoder cache argument", "takes none of cache")
    text = str(error)
    assert "\n" not in text
    assert f"transformers {compat.transformers.__version__}" in text
    assert "'decoder cache argument'" in text


def _renamed_cache_argument(layer_class: type[torch.nn.Module]) -> Callable[..., Any]:
    """A decoder-layer forward that takes its cache under a name vistrace does not know."""
    original = layer_class.forward

    def forward(self: Any, hidden_states: torch.Tensor, kv_store: Any = None, **kwargs: Any) -> Any:
        kwargs.pop("cache", None)
        kwargs.pop("past_key_values", None)
        name = compat._cache_argument_of(original)
        return original(self, hidden_states, **{name: kv_store}, **kwargs)

    return forward


def _check(model_dir: Path) -> tuple[int, str]:
    result = CliRunner().invoke(app, ["check", "--model", str(model_dir)])
    assert result.exception is None or isinstance(result.exception, SystemExit), result.exception
    return result.exit_code, result.output


@pytest.mark.parametrize("family", FAMILIES)
def test_check_names_a_decoder_layer_with_an_unknown_cache_argument(
    family: str,
    tiny_dirs: dict[str, Path],
    tiny_models: dict[str, LoadedModel],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    layer_class = _self_attention_layer(tiny_models[family])
    monkeypatch.setattr(layer_class, "forward", _renamed_cache_argument(layer_class))
    code, output = _check(tiny_dirs[family])
    assert code == 1, output
    line = next(line for line in output.splitlines() if line.startswith("decoder cache argument"))
    assert "FAIL" in line and "kv_store" in line and "transformers " in line, line
    # No invariant runs on a model whose contracts are broken: no number is produced.
    assert "fast == naive" not in output and "empty plan" not in output, output
    assert "check(s) failed: decoder cache argument" in output


@pytest.mark.parametrize("family", FAMILIES)
def test_check_passes_every_contract_on_the_installed_transformers(
    family: str, tiny_dirs: dict[str, Path]
) -> None:
    code, output = _check(tiny_dirs[family])
    assert code == 0, output
    contracts = output.split("contract", 1)[1].split("\ncheck ", 1)[0]
    for name in (
        "attention and mask registries",
        "sdpa attention",
        "text attention setting",
        "decoder layers, norm and head",
        "decoder cache argument",
        "Auto classes",
        "processor outputs",
        "decoder layers reach the seam",
        "model output cache and layout",
        "re-run of decoder layers",
        *(["Mllama vision features"] if family == "mllama" else []),
    ):
        line = next(line for line in contracts.splitlines() if line.startswith(name))
        assert "PASS" in line, line


@pytest.mark.parametrize("family", FAMILIES)
def test_a_knockout_stops_on_a_layer_that_ignores_its_cache(
    family: str, tiny_models: dict[str, LoadedModel], monkeypatch: pytest.MonkeyPatch
) -> None:
    """A layer that takes the cache under the declared name but does not store its keys there would
    let a re-run attend to nothing new: the fast strategy stops with the contract's name."""
    loaded = tiny_models[family]
    prepared = loaded.adapter.prepare(loaded.model, loaded.processor, scene_image(), "What is it?")
    runner = KnockoutRunner(loaded, mode="strict")
    layer_class = _self_attention_layer(loaded)
    original = layer_class.forward
    name = compat._cache_argument_of(original)

    def forgetful(self: Any, hidden_states: torch.Tensor, *args: Any, **kwargs: Any) -> Any:
        cache = kwargs.get(name)
        if cache is not None and not compat.is_cache(cache):
            kwargs[name] = None  # the re-run's cache is dropped
        return original(self, hidden_states, *args, **kwargs)

    monkeypatch.setattr(layer_class, "forward", forgetful)
    forgetful.__signature__ = compat.inspect.signature(original)  # type: ignore[attr-defined]
    with pytest.raises(compat.TransformersContractError, match="cache update"):
        runner.run(prepared, [3], [Pathway.parse("last_to_last")], 1, "fast")


def test_a_llava_checkpoint_with_a_pixtral_tower_is_refused(tiny_models: dict[str, LoadedModel]) -> None:
    """Pixtral checkpoints also say `llava`: refused with one line, never traced as LLaVA-1.5."""
    from transformers import LlavaConfig, PixtralVisionConfig

    from vistrace.adapters import UnsupportedModelError, get_adapter

    config = LlavaConfig(vision_config=PixtralVisionConfig().to_dict())
    with pytest.raises(UnsupportedModelError, match="'pixtral' vision tower"):
        get_adapter(config)
    assert get_adapter(tiny_models["llava"].model).model_type == "llava"
