"""Attention knockout: block a pathway in a sliding window of layers and score the answer.

Two strategies give the same numbers. `naive` runs one full forward per window per answer token,
as the research code does. `fast` (`vistrace.knockout.fast`) runs the sample once and re-runs, per
window, only the rows and layers the block can change; it can pack several samples' re-runs into
shared calls (`KnockoutRunner.sweep` with `pack_bytes`).
"""

from __future__ import annotations

import contextlib
import functools
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any, Generic, Literal, TypeVar

import torch

from vistrace.adapters import PreparedPrompt, traced
from vistrace.hook import Knockout, Plan
from vistrace.hook.plan import KnockoutMode
from vistrace.knockout.fast import FastSample, FastStrategy
from vistrace.knockout.pathways import PAPER_PATHWAYS, Pathway, window_layers
from vistrace.knockout.result import KnockoutResult, SampleNotSweepable, answer_probability
from vistrace.knockout.sequence import TeacherForced
from vistrace.models.loading import LoadedModel

Strategy = Literal["fast", "naive"]
DEFAULT_TEMPERATURE: dict[str, float] = {"strict": 1.0, "paper": 0.6}
STRATEGIES: tuple[str, ...] = ("fast", "naive")

Tag = TypeVar("Tag")


@dataclass(frozen=True)
class SampleSweep(Generic[Tag]):
    """The outcome of one sample of `KnockoutRunner.sweep`: `results[k]` for every window size, or
    `error` (one line: why this sample could not be swept) and no results."""

    tag: Tag
    results: dict[int, KnockoutResult] = field(default_factory=dict)
    error: str | None = None


def pack_bytes(pack_memory: float | None, device: torch.device) -> int:
    """The clean-pass bytes a sweep on `device` packs for `pack_memory` GiB; None: by default a tenth
    of the GPU's memory on CUDA, and nothing (every sample alone) elsewhere, where a bigger call
    saves little."""
    if pack_memory is not None:
        return int(pack_memory * 2**30)
    if device.type != "cuda":
        return 0
    return int(torch.cuda.get_device_properties(device).total_memory // 10)


class KnockoutRunner:
    """Runs knockout sweeps for one loaded model."""

    def __init__(
        self, loaded: LoadedModel, *, mode: KnockoutMode = "strict", temperature: float | None = None
    ):
        self.loaded = loaded
        self.model = loaded.model
        self.adapter = loaded.adapter
        self.mode: KnockoutMode = mode
        self.temperature = DEFAULT_TEMPERATURE[mode] if temperature is None else temperature
        self.n_layers = self.adapter.num_layers(self.model)
        self.cross = self.adapter.cross_layers(self.model)
        self.device = loaded.device

    def run(
        self,
        prepared: PreparedPrompt,
        answer_tokens: Sequence[int],
        pathways: Sequence[Pathway],
        k: int,
        strategy: str = "fast",
    ) -> KnockoutResult:
        """Score `answer_tokens` (EOS already removed) for every pathway and window centre.

        ValueError when the answer is empty, the strategy unknown, or the fast strategy would not be
        exact for this model or sample (use `naive`)."""
        self._check_strategy(strategy)
        seq = self._sequence(prepared, answer_tokens)
        with self._traced():
            if strategy == "naive":
                return self._naive(seq, pathways, k)
            return self._fast.sweep([self._fast.clean(seq, pathways)], pathways, k)[0]

    def sweep(
        self,
        samples: Iterable[tuple[Tag, PreparedPrompt, Sequence[int]]],
        pathways: Sequence[Pathway],
        ks: Sequence[int],
        strategy: str = "fast",
        *,
        pack_bytes: int = 0,
    ) -> Iterator[SampleSweep[Tag]]:
        """Sweep each `(tag, prompt, answer tokens)` for every pathway, window centre and window size
        in `ks`, yielding one `SampleSweep` per sample in input order, as soon as it is done.

        The fast strategy runs each sample's clean pass once for all `ks`. With `pack_bytes` > 0 it
        holds the clean passes of consecutive samples up to that many bytes (plus one sample; see
        `FastSample.nbytes`) and sweeps them together, windows of several samples sharing re-run
        calls: the same numbers as one sample at a time, up to float rounding of the larger matrix
        products. A sample that cannot be swept (`SampleNotSweepable`: an empty answer, the fast
        strategy not exact for its tokens) comes back with its `error`, and the others go on; a
        problem with the model or the strategy raises ValueError before any sample runs."""
        self._check_strategy(strategy)
        pending: list[tuple[Tag, FastSample | str]] = []
        held = 0
        for tag, prepared, answer in samples:
            try:
                seq = self._sequence(prepared, answer)
                with self._traced():
                    if strategy == "naive":
                        results = {k: self._naive(seq, pathways, k) for k in ks}
                    else:
                        sample = self._fast.clean(seq, pathways)
            except SampleNotSweepable as error:
                pending.append((tag, " ".join(str(error).split())))
                continue
            if strategy == "naive":
                yield from self._swept(pending, pathways, ks)
                pending = []
                yield SampleSweep(tag, results)
                continue
            if any(isinstance(item, FastSample) for _, item in pending) and held + sample.nbytes > pack_bytes:
                yield from self._swept(pending, pathways, ks)
                pending, held = [], 0
            pending.append((tag, sample))
            held += sample.nbytes
            if held >= pack_bytes:  # full: no later sample can join
                yield from self._swept(pending, pathways, ks)
                pending, held = [], 0
        yield from self._swept(pending, pathways, ks)

    def _swept(
        self, pending: list[tuple[Tag, FastSample | str]], pathways: Sequence[Pathway], ks: Sequence[int]
    ) -> Iterator[SampleSweep[Tag]]:
        samples = [item for _, item in pending if isinstance(item, FastSample)]
        by_k: dict[int, list[KnockoutResult]] = {}
        if samples:
            with self._traced():
                by_k = {k: self._fast.sweep(samples, pathways, k) for k in ks}
        done = 0
        for tag, item in pending:
            if isinstance(item, str):
                yield SampleSweep(tag, error=item)
            else:
                yield SampleSweep(tag, {k: results[done] for k, results in by_k.items()})
                done += 1

    def _sequence(self, prepared: PreparedPrompt, answer_tokens: Sequence[int]) -> TeacherForced:
        if not answer_tokens:
            raise SampleNotSweepable("the answer has no tokens to score")
        return TeacherForced(prepared, tuple(int(t) for t in answer_tokens), self.mode)

    def _check_strategy(self, strategy: str) -> None:
        if strategy not in STRATEGIES:
            raise ValueError(f"unknown strategy {strategy!r}; choose fast or naive")
        if strategy == "fast" and not self.adapter.text_attention_causal:
            raise ValueError(
                f"the fast strategy assumes causal text attention, and {self.adapter.model_type}'s is not "
                "(its image block attends both ways): use strategy naive"
            )

    @contextlib.contextmanager
    def _traced(self) -> Iterator[None]:
        with torch.no_grad(), traced(self.model, Plan(cross_layers=self.cross, mode=self.mode)):
            yield

    @functools.cached_property
    def _fast(self) -> FastStrategy:
        return FastStrategy(
            self.adapter, self.model, self.cross, self.n_layers, self.mode, self.temperature, self._forward
        )

    # ----- shared -----------------------------------------------------------------------------
    def _plan(
        self,
        seq: TeacherForced,
        step: int,
        offset: int,
        pathway: Pathway | None,
        layer_sets: list[frozenset[int]],
    ) -> Plan:
        length = seq.prompt_len + step
        batch = max(1, len(layer_sets))
        image_rows = seq.image_rows(length)[None].expand(batch, -1)
        knockout = None
        if pathway is not None:
            layers = torch.zeros(batch, self.n_layers, dtype=torch.bool)
            for b, layer_set in enumerate(layer_sets):
                layers[b, sorted(layer_set)] = True
            knockout = Knockout(
                roles=seq.roles(step)[None].expand(batch, -1),
                src=torch.full((batch,), int(pathway.src), dtype=torch.int8),
                dst=torch.full((batch,), int(pathway.dst), dtype=torch.int8),
                layers=layers,
            )
        return Plan(
            cross_layers=self.cross, mode=self.mode, knockout=knockout, offset=offset, image_rows=image_rows
        )

    def _forward(self, inputs: dict[str, Any], plan: Plan, **kwargs: Any) -> Any:
        from vistrace.hook.plan import use_plan

        inputs = {k: v.to(self.device) if isinstance(v, torch.Tensor) else v for k, v in inputs.items()}
        with use_plan(plan):
            return self.model(**inputs, **kwargs)

    # ----- naive ------------------------------------------------------------------------------
    def _naive(self, seq: TeacherForced, pathways: Sequence[Pathway], k: int) -> KnockoutResult:
        full_tokens: list[float] = []
        tokens: dict[str, list[list[float]]] = {p.name: [[] for _ in range(self.n_layers)] for p in pathways}
        evaluations = 0
        for step, token in enumerate(seq.answer):
            length = seq.prompt_len + step
            inputs = seq.model_inputs(length, self.adapter)
            logits = self._forward(inputs, self._plan(seq, step, 0, None, [])).logits[:, -1]
            full_tokens.append(float(answer_probability(logits, token, self.temperature)[0]))
            evaluations += self.n_layers * length
            for pathway in pathways:
                for centre in range(self.n_layers):
                    layers = frozenset(window_layers(centre, k, self.n_layers))
                    plan = self._plan(seq, step, 0, pathway, [layers])
                    logits = self._forward(inputs, plan).logits[:, -1]
                    tokens[pathway.name][centre].append(
                        float(answer_probability(logits, token, self.temperature)[0])
                    )
                    evaluations += self.n_layers * length
        return KnockoutResult.from_tokens(seq.answer, full_tokens, tokens, evaluations)


__all__ = [
    "DEFAULT_TEMPERATURE",
    "PAPER_PATHWAYS",
    "KnockoutResult",
    "KnockoutRunner",
    "Pathway",
    "SampleNotSweepable",
    "SampleSweep",
    "Strategy",
    "pack_bytes",
    "window_layers",
]
