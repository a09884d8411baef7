"""`vistrace check`, second part: the seam's invariants on the user's model, within its dtype's
tolerance."""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, replace

import torch

from vistrace import compat
from vistrace.adapters import PreparedPrompt, traced
from vistrace.check.contracts import CheckResult, run_contracts, synthetic_image
from vistrace.hook import CaptureRecorder, Knockout, Plan
from vistrace.knockout.sweep import PAPER_PATHWAYS, KnockoutResult, KnockoutRunner, Pathway
from vistrace.models.loading import LoadedModel
from vistrace.roles import Role


@dataclass(frozen=True)
class Tolerance:
    """How far two computations that are equal in exact arithmetic may drift apart at one dtype.

    `logit`: |Δlogit| (logits of size ~20); `probability`: |Δp| of the answer's probability;
    `log_probability`: |Δ log p| of the check's 3-token answer; `why`: where the numbers come from."""

    logit: float
    probability: float
    log_probability: float
    why: str


TOLERANCES: dict[torch.dtype, Tolerance] = {
    torch.float32: Tolerance(
        1e-4,
        1.1e-4,
        1e-3,
        "24-bit significand (eps 1.2e-7): adding in another order moves a logit of ~20 by ~1e-5",
    ),
    torch.float16: Tolerance(
        2e-2,
        5.1e-2,
        0.3,
        "11-bit significand (eps 9.8e-4): a logit of 16-32 is held to steps of 0.016; log p 0.1 a token",
    ),
    torch.bfloat16: Tolerance(
        0.25,
        5.1e-2,
        0.75,
        "8-bit significand (eps 7.8e-3): a logit of 16-32 is held to steps of 0.125, 8 times float16's; "
        "two steps for a logit, two for the log p of each answer token",
    ),
}
"""The tolerances of `vistrace check` by the model's dtype (another dtype: float32's)."""


def tolerance_for(dtype: torch.dtype) -> Tolerance:
    return TOLERANCES.get(dtype, TOLERANCES[torch.float32])


@dataclass(frozen=True)
class _Probe:
    """What every invariant runs on: the model, the synthetic prompt on the model's device, the
    model's own logits for it, and the tolerance of its dtype."""

    loaded: LoadedModel
    prepared: PreparedPrompt
    inputs: dict[str, torch.Tensor]
    reference: torch.Tensor
    tolerance: Tolerance
    dtype: torch.dtype

    @property
    def cross(self) -> frozenset[int]:
        return self.loaded.adapter.cross_layers(self.loaded.model)

    def logits(self, plan: Plan | None, feed: dict[str, torch.Tensor] | None = None) -> torch.Tensor:
        model = self.loaded.model
        with torch.no_grad():
            if plan is None:
                return model(**(feed or self.inputs)).logits.float()
            with traced(model, plan):
                return model(**(feed or self.inputs)).logits.float()

    def knockout(self, src: Role, dst: Role, active: bool) -> Knockout:
        n_layers = self.loaded.adapter.num_layers(self.loaded.model)
        return Knockout(
            roles=self.prepared.roles[None],
            src=torch.tensor([int(src)], dtype=torch.int8),
            dst=torch.tensor([int(dst)], dtype=torch.int8),
            layers=torch.full((1, n_layers), active, dtype=torch.bool),
        )

    def recorder(self) -> CaptureRecorder:
        keys = self.prepared.image_keys
        return CaptureRecorder(
            layers=frozenset(self.loaded.adapter.image_layers(self.loaded.model)),
            image_keys=None if keys is None else keys[None],
        )


def _empty_plan(probe: _Probe) -> str:
    tol = probe.tolerance.logit
    diff = float((probe.logits(Plan()) - probe.reference).abs().max())
    assert diff <= tol, f"max |logit difference| {diff:.3g} > {tol:g}"
    return f"max |Δlogit| {diff:.2g}"


def _causality(probe: _Probe) -> str:
    # The explicit path only computes the rows a block targets; question rows have later keys
    # (the template, the last token) that a lost causal mask would let them see.
    tol = probe.tolerance.logit
    plan = Plan(cross_layers=probe.cross, knockout=probe.knockout(Role.QUESTION, Role.QUESTION, True))
    changed = dict(probe.inputs)
    ids = probe.inputs["input_ids"].clone()
    vocabulary = int(probe.loaded.model.get_input_embeddings().num_embeddings - 8)
    ids[0, -1] = (ids[0, -1] + 1) % vocabulary
    changed["input_ids"] = ids
    a, b = probe.logits(plan)[0, :-1], probe.logits(plan, changed)[0, :-1]
    reached = float((a - probe.reference[0, :-1]).abs().max())
    assert reached > tol, "blocking question→question changed nothing: the explicit path was not run"
    diff = float((a - b).abs().max())
    assert diff <= tol, f"changing the last token moved earlier logits by {diff:.3g}"
    return "earlier positions ignore a later token"


def _targeted_rows(probe: _Probe) -> str:
    tol = probe.tolerance.logit
    blocked = probe.logits(
        Plan(cross_layers=probe.cross, knockout=probe.knockout(Role.IMAGE, Role.LAST, True))
    )
    others = float((blocked[0, :-1] - probe.reference[0, :-1]).abs().max())
    last = float((blocked[0, -1] - probe.reference[0, -1]).abs().max())
    assert others <= tol, f"rows other than last changed by {others:.3g}"
    assert last > tol, "blocking image→last changed nothing: image keys not reached"
    return f"last row Δ {last:.2g}, other rows Δ {others:.2g}"


def _block_nothing(probe: _Probe) -> str:
    tol = probe.tolerance.logit
    plan = Plan(cross_layers=probe.cross, knockout=probe.knockout(Role.IMAGE, Role.LAST, False))
    diff = float((probe.logits(plan) - probe.reference).abs().max())
    assert diff <= tol, f"an inactive block changed logits by {diff:.3g}"
    return f"max |Δlogit| {diff:.2g}"


def _image_keys(probe: _Probe) -> str:
    loaded = probe.loaded
    geometry = loaded.adapter.geometry(loaded.model, loaded.processor, probe.prepared.image_size)
    recorder = probe.recorder()
    with torch.no_grad(), traced(loaded.model, Plan(cross_layers=probe.cross, capture=recorder)):
        loaded.model(**probe.inputs)
    captured = recorder.stacked()
    assert captured.shape[-1] == geometry.num_features, (
        f"{captured.shape[-1]} image keys vs {geometry.num_features} features in the geometry"
    )
    return f"{geometry.num_features} image features in {len(recorder.rows)} layers"


def _fast_equals_naive(probe: _Probe) -> str:
    # Three answer tokens: a per-token input that is not extended with the fed answer tokens (a
    # cross-attention mask row, token types, 3-d positions) changes the second and third scores.
    generated = probe.loaded.generate(probe.inputs, max_new_tokens=3, min_new_tokens=3, do_sample=False)
    answer = [int(t) for t in generated[0]]
    runner = KnockoutRunner(probe.loaded, mode="strict")
    pathways = [Pathway.parse(p) for p in PAPER_PATHWAYS]
    fast = runner.run(probe.prepared, answer, pathways, 3, "fast")
    naive = runner.run(probe.prepared, answer, pathways, 3, "naive")
    pairs = _pairs(fast, naive)
    worst = max(abs(a - b) for a, b in pairs)
    worst_log = _log_gap(pairs)
    bound, log_bound = probe.tolerance.probability, probe.tolerance.log_probability
    assert worst <= bound and worst_log <= log_bound, (
        f"fast and naive differ by {worst:.3g} in p, {worst_log:.3g} in log p "
        f"({str(probe.dtype).removeprefix('torch.')}: at most {bound:g}, {log_bound:g})"
    )
    return (
        f"max |Δp| {worst:.2g}, max |Δlog p| {worst_log:.2g} over {len(answer)} answer tokens "
        f"({str(probe.dtype).removeprefix('torch.')}: at most {bound:g}, {log_bound:g})"
    )


def _pairs(x: KnockoutResult, y: KnockoutResult) -> list[tuple[float, float]]:
    return [(a, b) for p in x.probs for a, b in zip(x.probs[p], y.probs[p], strict=True)]


def _log_gap(pairs: list[tuple[float, float]]) -> float:
    """The largest |Δ log p|: forced answer tokens can be unlikely, their product tiny."""
    return max(abs(math.log(max(a, 1e-300)) - math.log(max(b, 1e-300))) for a, b in pairs)


def _packed_equals_alone(probe: _Probe) -> str:
    # Two samples of different lengths (another image size, another question) share re-run calls.
    loaded, answer = probe.loaded, [int(probe.reference[0, -1].argmax())]
    other = loaded.adapter.prepare(
        loaded.model, loaded.processor, synthetic_image(64, 96), "Which is blue here?"
    )
    samples = [(0, probe.prepared, answer), (1, other, answer)]
    runner = KnockoutRunner(loaded, mode="strict")
    pathways = [Pathway.parse(p) for p in PAPER_PATHWAYS]
    alone, packed = (
        [s.results[3] for s in runner.sweep(samples, pathways, [3], pack_bytes=b)] for b in (0, 1 << 60)
    )
    worst = _log_gap([pair for x, y in zip(packed, alone, strict=True) for pair in _pairs(x, y)])
    bound = probe.tolerance.log_probability
    assert worst <= bound, (
        f"packed and one-at-a-time sweeps differ by {worst:.3g} in log p (at most {bound:g})"
    )
    return f"max |Δlog p| {worst:.2g} over 2 samples packed ({str(probe.dtype).removeprefix('torch.')})"


def _capture_keeps_tokens(probe: _Probe) -> str:
    loaded, options = probe.loaded, {"max_new_tokens": 6, "do_sample": False}
    plain = loaded.generate(probe.inputs, **options, **compat.full_cache(loaded.model))
    with traced(loaded.model, Plan(cross_layers=probe.cross, capture=probe.recorder())):
        # As `capture` generates: with a cache that keeps every key (`compat.full_cache`).
        captured = loaded.generate(probe.inputs, **options, **compat.full_cache(loaded.model))
    assert torch.equal(plain, captured), "greedy tokens differ with capture on"
    return "greedy tokens identical"


@dataclass(frozen=True)
class Check:
    """One invariant of the seam on the user's model: its name (the line `vistrace check` prints),
    the function that runs it (returns a detail, raises when it fails) and what it proves."""

    name: str
    run: Callable[[_Probe], str]
    proves: str


CHECKS: tuple[Check, ...] = (
    Check(
        "empty plan == model output",
        _empty_plan,
        "with nothing to do, the seam hands every attention call to sdpa untouched",
    ),
    Check(
        "causality (explicit path)",
        _causality,
        "the rows the seam computes itself get the causal mask: no position sees a later one",
    ),
    Check(
        "blocking changes only targeted rows",
        _targeted_rows,
        "a block reaches the image keys and changes the rows it targets, no other",
    ),
    Check(
        "blocking nothing changes nothing",
        _block_nothing,
        "a plan whose block is inactive in every layer leaves the output as it is",
    ),
    Check(
        "image keys where the adapter says",
        _image_keys,
        "the adapter's image positions are as many as its geometry's image features",
    ),
    Check(
        "fast == naive (k=3, 3-token answer)",
        _fast_equals_naive,
        "the fast strategy scores what one full pass per window scores, within the dtype's tolerance",
    ),
    Check(
        "packed sweeps == one at a time",
        _packed_equals_alone,
        "samples packed into shared re-run calls (trace --pack-memory) score what each scores alone",
    ),
    Check(
        "capture leaves greedy tokens unchanged",
        _capture_keeps_tokens,
        "capturing attention does not change what the model generates",
    ),
)
"""The invariants `vistrace check` runs, in order, after the contracts."""


def run_checks(loaded: LoadedModel, atol: float | None = None) -> list[CheckResult]:
    """Every contract, then every invariant of :data:`CHECKS`, as `CheckResult`s; a check that
    raises is reported as failed. When transformers breaks a contract, no invariant is run: its
    numbers would mean nothing. The tolerances follow the model's dtype (:data:`TOLERANCES`);
    `atol` replaces the logit tolerance."""
    contracts, prepared = run_contracts(loaded)
    if prepared is None or any(result.broken_contract for result in contracts):
        return contracts
    dtype = next(loaded.model.parameters()).dtype
    tolerance = tolerance_for(dtype)
    if atol is not None:
        tolerance = replace(tolerance, logit=atol)
    inputs = {k: v.to(loaded.device) for k, v in prepared.inputs.items()}
    with torch.no_grad():
        reference = loaded.model(**inputs).logits.float()
    probe = _Probe(loaded, prepared, inputs, reference, tolerance, dtype)
    results = list(contracts)
    for check in CHECKS:
        try:
            results.append(CheckResult(check.name, True, check.run(probe)))
        except Exception as error:  # a failing invariant is reported, not raised
            results.append(CheckResult(check.name, False, f"{type(error).__name__}: {error}"))
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
