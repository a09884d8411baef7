"""`vistrace check`, first part: the contracts with the installed transformers, probed on the user's
model with a synthetic image."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
from PIL import Image, ImageDraw

from vistrace import compat
from vistrace.adapters import PreparedPrompt, traced
from vistrace.hook import Plan, UnreachedLayersError
from vistrace.hook.seam import SEAM_NAME, seam_attention
from vistrace.knockout.sweep import KnockoutRunner, Pathway
from vistrace.models.loading import LoadedModel


@dataclass(frozen=True)
class CheckResult:
    """One line of `vistrace check`: a contract with transformers or an invariant of the seam."""

    name: str
    passed: bool
    detail: str
    kind: str = "check"
    # A broken contract with transformers: the invariants are not run, their numbers would mean nothing.
    broken_contract: bool = False


def synthetic_image(width: int = 96, height: int = 64) -> Image.Image:
    image = Image.new("RGB", (width, height), (235, 235, 235))
    draw = ImageDraw.Draw(image)
    draw.ellipse([8, 8, 40, 40], fill=(220, 30, 30))
    draw.rectangle([56, 24, 88, 56], fill=(30, 30, 220))
    return image


def run_contracts(loaded: LoadedModel) -> tuple[list[CheckResult], PreparedPrompt | None]:
    """Every contract with the installed transformers (`vistrace.compat`) as a `CheckResult`, and the
    synthetic prompt they were probed on (None when the processor broke its contract)."""
    model, adapter = loaded.model, loaded.adapter
    results = [
        CheckResult(status.name, status.ok, status.detail, "contract", not status.ok)
        for status in compat.static_contracts(model, SEAM_NAME, seam_attention)
    ]
    prepared: list[PreparedPrompt] = []

    def processor_outputs() -> str:
        prepared.append(
            adapter.prepare(model, loaded.processor, synthetic_image(), "What color is the circle?")
        )
        names = ", ".join(sorted(prepared[0].inputs))
        return f"{names}; image token {adapter.image_token_id(model)}"

    def layers_reached() -> str:
        # A layer whose mixing bypasses the attention interface (linear attention) cannot be traced.
        inputs = {k: v.to(loaded.device) for k, v in prepared[0].inputs.items()}
        with torch.no_grad(), traced(model, Plan()):
            model(**inputs)
        return f"all {adapter.num_layers(model)} decoder layers"

    def output_cache() -> str:
        inputs = {k: v.to(loaded.device) for k, v in prepared[0].inputs.items()}
        with torch.no_grad(), traced(model, Plan()):
            output = model(**inputs, use_cache=True)
        field = compat.output_cache_field(output)
        keys, _ = compat.cache_tensors(output[field], adapter.num_layers(model))
        return f"output.{field}; cache.layers[i].keys {tuple(keys[0].shape)}"

    def rerun() -> str:
        # One fast sweep drives the decoder layers by hand: the cache they are given must be the one
        # they update, every argument they get must be sliceable, and norm + head must give the logits.
        runner = KnockoutRunner(loaded, mode="strict")
        runner.run(prepared[0], [0], [Pathway.parse("last_to_last")], 1, "fast")
        return "cache update, decoder-layer arguments, final norm and head"

    probes: list[tuple[str, Callable[[], str]]] = [
        ("processor outputs", processor_outputs),
        ("decoder layers reach the seam", layers_reached),
        ("model output cache and layout", output_cache),
        ("re-run of decoder layers", rerun),
    ]
    for name, probe in probes:
        broken = [r.name for r in results if r.broken_contract]
        if broken:
            results.append(CheckResult(name, False, f"not probed: {broken[0]} failed", "contract", True))
            continue
        try:
            results.append(CheckResult(name, True, probe(), "contract"))
        except compat.TransformersContractError as error:
            results.append(CheckResult(name, False, _one_line(error), "contract", True))
        except UnreachedLayersError as error:  # the model, not transformers: nothing else is traced
            results.append(CheckResult(name, False, str(error), "contract", True))
        except Exception as error:  # e.g. a fault of the seam itself: the invariants below locate it
            results.append(CheckResult(name, False, _one_line(error), "contract"))
    results += [
        CheckResult(status.name, status.ok, status.detail, "contract", not status.ok)
        for status in adapter.family_contracts(model)
    ]
    return results, (prepared[0] if prepared else None)


def _one_line(error: Exception) -> str:
    text = str(error)
    if not isinstance(error, compat.TransformersContractError):
        text = f"{type(error).__name__}: {error}"
    return text.splitlines()[0] if text else type(error).__name__
