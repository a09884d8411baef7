"""`vistrace check`: the contracts with the installed transformers, then the seam's invariants on the
user's own model, with a synthetic image."""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import torch
from PIL import Image, ImageDraw

from vistrace import compat
from vistrace.adapters import PreparedPrompt, traced
from vistrace.hook import CaptureRecorder, Knockout, Plan
from vistrace.hook.seam import SEAM_NAME, seam_attention
from vistrace.knockout.sweep import PAPER_PATHWAYS, KnockoutRunner, Pathway
from vistrace.models.loading import LoadedModel
from vistrace.roles import Role


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


def run_checks(loaded: LoadedModel, atol: float | None = None) -> list[CheckResult]:
    """Every contract, then every invariant, as `CheckResult`s; a check that raises is reported as
    failed. When transformers breaks a contract, no invariant is run: its numbers would mean nothing."""
    contracts, prepared = run_contracts(loaded)
    if prepared is None or any(result.broken_contract for result in contracts):
        return contracts
    model, adapter = loaded.model, loaded.adapter
    dtype = next(model.parameters()).dtype
    tol = atol if atol is not None else (1e-4 if dtype == torch.float32 else 2e-2)
    inputs = {k: v.to(loaded.device) for k, v in prepared.inputs.items()}
    cross = adapter.cross_layers(model)
    n_layers = adapter.num_layers(model)

    def logits(plan: Plan | None, feed: dict[str, torch.Tensor] = inputs) -> torch.Tensor:
        with torch.no_grad():
            if plan is None:
                return model(**feed).logits.float()
            with traced(model, plan):
                return model(**feed).logits.float()

    reference = logits(None)

    def knockout(src: Role, dst: Role, active: bool) -> Knockout:
        return Knockout(
            roles=prepared.roles[None],
            src=torch.tensor([int(src)], dtype=torch.int8),
            dst=torch.tensor([int(dst)], dtype=torch.int8),
            layers=torch.full((1, n_layers), active, dtype=torch.bool),
        )

    def empty_plan() -> str:
        diff = float((logits(Plan()) - reference).abs().max())
        assert diff <= tol, f"max |logit difference| {diff:.3g} > {tol:g}"
        return f"max |Δlogit| {diff:.2g}"

    def causality() -> str:
        # The explicit path only computes the rows a block targets; question rows have later keys
        # (the template, the last token) that a lost causal mask would let them see.
        plan = Plan(cross_layers=cross, knockout=knockout(Role.QUESTION, Role.QUESTION, True))
        changed = dict(inputs)
        ids = inputs["input_ids"].clone()
        ids[0, -1] = (ids[0, -1] + 1) % int(model.get_input_embeddings().num_embeddings - 8)
        changed["input_ids"] = ids
        a, b = logits(plan)[0, :-1], logits(plan, changed)[0, :-1]
        reached = float((a - reference[0, :-1]).abs().max())
        assert reached > tol, "blocking question→question changed nothing: the explicit path was not run"
        diff = float((a - b).abs().max())
        assert diff <= tol, f"changing the last token moved earlier logits by {diff:.3g}"
        return "earlier positions ignore a later token"

    def targeted_rows() -> str:
        plan = Plan(cross_layers=cross, knockout=knockout(Role.IMAGE, Role.LAST, True))
        blocked = logits(plan)
        others = float((blocked[0, :-1] - reference[0, :-1]).abs().max())
        last = float((blocked[0, -1] - reference[0, -1]).abs().max())
        assert others <= tol, f"rows other than last changed by {others:.3g}"
        assert last > tol, "blocking image→last changed nothing: image keys not reached"
        return f"last row Δ {last:.2g}, other rows Δ {others:.2g}"

    def block_nothing() -> str:
        diff = float(
            (logits(Plan(cross_layers=cross, knockout=knockout(Role.IMAGE, Role.LAST, False))) - reference)
            .abs()
            .max()
        )
        assert diff <= tol, f"an inactive block changed logits by {diff:.3g}"
        return f"max |Δlogit| {diff:.2g}"

    def image_keys() -> str:
        geometry = adapter.geometry(model, loaded.processor, prepared.image_size)
        recorder = CaptureRecorder(
            layers=frozenset(adapter.image_layers(model)),
            image_keys=None if prepared.image_keys is None else prepared.image_keys[None],
        )
        with torch.no_grad(), traced(model, Plan(cross_layers=cross, capture=recorder)):
            model(**inputs)
        captured = recorder.stacked()
        assert captured.shape[-1] == geometry.num_features, (
            f"{captured.shape[-1]} image keys vs {geometry.num_features} features in the geometry"
        )
        return f"{geometry.num_features} image features in {len(recorder.rows)} layers"

    def fast_equals_naive() -> str:
        # Three answer tokens: a per-token input that is not extended with the fed answer tokens (a
        # cross-attention mask row, token types, 3-d positions) changes the second and third scores.
        with torch.no_grad():
            generated = model.generate(**inputs, max_new_tokens=3, min_new_tokens=3, do_sample=False)
        answer = [int(t) for t in generated[0, inputs["input_ids"].shape[1] :]]
        runner = KnockoutRunner(loaded, mode="strict")
        pathways = [Pathway.parse(p) for p in PAPER_PATHWAYS]
        fast = runner.run(prepared, answer, pathways, 3, "fast")
        naive = runner.run(prepared, answer, pathways, 3, "naive")
        pairs = [(a, b) for p in fast.probs for a, b in zip(fast.probs[p], naive.probs[p], strict=True)]
        worst = max(abs(a - b) for a, b in pairs)
        # Forced answer tokens can be unlikely, so their product tiny: compare log-probabilities too.
        worst_log = max(abs(math.log(max(a, 1e-300)) - math.log(max(b, 1e-300))) for a, b in pairs)
        bound = (1e-5 if dtype == torch.float32 else 1e-3) + (1e-4 if dtype == torch.float32 else 5e-2)
        # Half precision: about one bf16 step of a logit of size ~20 per scored token.
        log_bound = 1e-3 if dtype == torch.float32 else 0.1 * len(answer)
        assert worst <= bound and worst_log <= log_bound, (
            f"fast and naive differ by {worst:.3g} in p, {worst_log:.3g} in log p ({dtype})"
        )
        return f"max |Δp| {worst:.2g}, max |Δlog p| {worst_log:.2g} over {len(answer)} answer tokens"

    def capture_keeps_tokens() -> str:
        kwargs = {"max_new_tokens": 6, "do_sample": False}
        with torch.no_grad():
            plain = model.generate(**inputs, **kwargs)
            recorder = CaptureRecorder(
                layers=frozenset(adapter.image_layers(model)),
                image_keys=None if prepared.image_keys is None else prepared.image_keys[None],
            )
            with traced(model, Plan(cross_layers=cross, capture=recorder)):
                captured = model.generate(**inputs, **kwargs)
        assert torch.equal(plain, captured), "greedy tokens differ with capture on"
        return "greedy tokens identical"

    checks: list[tuple[str, Callable[[], str]]] = [
        ("empty plan == model output", empty_plan),
        ("causality (explicit path)", causality),
        ("blocking changes only targeted rows", targeted_rows),
        ("blocking nothing changes nothing", block_nothing),
        ("image keys where the adapter says", image_keys),
        ("fast == naive (k=3, 3-token answer)", fast_equals_naive),
        ("capture leaves greedy tokens unchanged", capture_keeps_tokens),
    ]
    results = list(contracts)
    for name, check in checks:
        try:
            results.append(CheckResult(name, True, check()))
        except Exception as error:  # a failing invariant is reported, not raised
            results.append(CheckResult(name, False, f"{type(error).__name__}: {error}"))
    return results


def format_results(results: list[CheckResult]) -> str:
    """The contracts table, then the checks table (when any check ran)."""
    width = max(len(r.name) for r in results)
    lines = [f"transformers {compat.transformers.__version__}"]
    for kind in ("contract", "check"):
        rows = [r for r in results if r.kind == kind]
        if rows:
            lines.append(f"{kind.ljust(width)}  result  detail")
            lines += [f"{r.name.ljust(width)}  {'PASS' if r.passed else 'FAIL'}    {r.detail}" for r in rows]
    return "\n".join(lines)
