"""Attention knockout: block a pathway in a sliding window of layers and score the answer.

Two strategies give the same numbers. `naive` runs one full forward per window per answer token,
as the research code does. `fast` runs the sample once (the image encoded once) and keeps that clean
pass' keys, values and per-layer hidden states. Windows whose affected layers are the same are
computed once. Each remaining window re-runs only what can change: the rows from the first row the
pathway can change (a single row for `*_to_last`), from the window's first affected layer up,
starting from the clean hidden states there and attending to the clean keys before those rows.
Windows are batched, the batch growing as the layers go up. For a multi-token answer, an answer
step re-runs only the rows whose blocked entries differ from the previous step's re-run.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

import torch

from vistrace import compat
from vistrace.adapters import PreparedPrompt, traced
from vistrace.hook import Knockout, Plan
from vistrace.hook.plan import KnockoutMode
from vistrace.knockout.pathways import PAPER_PATHWAYS, Pathway, window_layers
from vistrace.knockout.rerun import CleanPass, RowState, clean_pass, rerun
from vistrace.knockout.sequence import TeacherForced
from vistrace.models.loading import LoadedModel
from vistrace.roles import Role

Strategy = Literal["fast", "naive"]
DEFAULT_TEMPERATURE: dict[str, float] = {"strict": 1.0, "paper": 0.6}


@dataclass(frozen=True)
class KnockoutResult:
    """Answer probability of one sample: `p_full` unblocked, `probs[p][l]` with pathway `p` blocked in
    the window centred at layer `l` (one value per decoder layer), each the product over the answer
    tokens. `layer_evaluations` counts decoder-layer × token evaluations spent (text decoder only).

    The per-token probabilities behind them, from which any score can be recomputed
    (`vistrace.knockout.scores`): `p_full_tokens[i]` of answer token i unblocked, `token_probs[p][l][i]`
    blocked."""

    p_full: float
    probs: dict[str, list[float]]
    answer_tokens: tuple[int, ...]
    layer_evaluations: int
    p_full_tokens: tuple[float, ...] = ()
    token_probs: dict[str, list[list[float]]] = field(default_factory=dict)


def _answer_probability(logits: torch.Tensor, token: int, temperature: float) -> torch.Tensor:
    """(B,) probability of `token` under softmax(logits / T), logits (B, V) cast to float32."""
    return torch.softmax(logits.float() / temperature, dim=-1)[:, token]


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
        """Score `answer_tokens` (EOS already removed) for every pathway and window centre."""
        if not answer_tokens:
            raise ValueError("the answer has no tokens to score")
        if strategy == "fast" and not self.adapter.text_attention_causal:
            raise ValueError(
                f"the fast strategy assumes causal text attention, and {self.adapter.model_type}'s is not "
                "(its image block attends both ways): use strategy naive"
            )
        seq = TeacherForced(prepared, tuple(int(t) for t in answer_tokens), self.mode)
        with torch.no_grad(), traced(self.model, Plan(cross_layers=self.cross, mode=self.mode)):
            if strategy == "naive":
                return self._naive(seq, pathways, k)
            if strategy == "fast":
                return self._fast(seq, pathways, k)
        raise ValueError(f"unknown strategy {strategy!r}; choose fast or naive")

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
            full_tokens.append(float(_answer_probability(logits, token, self.temperature)[0]))
            evaluations += self.n_layers * length
            for pathway in pathways:
                for centre in range(self.n_layers):
                    layers = frozenset(window_layers(centre, k, self.n_layers))
                    plan = self._plan(seq, step, 0, pathway, [layers])
                    logits = self._forward(inputs, plan).logits[:, -1]
                    tokens[pathway.name][centre].append(
                        float(_answer_probability(logits, token, self.temperature)[0])
                    )
                    evaluations += self.n_layers * length
        probs = {name: [math.prod(values) for values in per_layer] for name, per_layer in tokens.items()}
        return KnockoutResult(
            math.prod(full_tokens), probs, seq.answer, evaluations, tuple(full_tokens), tokens
        )

    # ----- fast -------------------------------------------------------------------------------
    def _fast(self, seq: TeacherForced, pathways: Sequence[Pathway], k: int) -> KnockoutResult:
        total = seq.prompt_len + len(seq.answer) - 1
        plans = {p.name: _PathwayPlan.make(seq, p, self.cross, self.n_layers) for p in pathways}
        starts = [e.start for plan in plans.values() for e in plan.schedule if e is not None]
        layers = compat.decoder_layers(self.model)
        finish = self.adapter.finisher(self.model)
        clean_plan = self._plan(seq, len(seq.answer) - 1, 0, None, [])
        inputs = seq.model_inputs(total, self.adapter)
        for start in sorted(set(starts)):
            problem = self.adapter.rerun_start_error(inputs, start)
            if problem is not None:
                raise ValueError(f"{problem}: the fast strategy would not be exact; use strategy naive")
        # A config-less cache: every layer keeps every key (one built from the config keeps only the
        # last `sliding_window - 1` keys of a sliding-window layer, and re-runs need them all).
        cache = compat.full_cache(self.model)
        clean = clean_pass(
            self.adapter,
            self.model,
            lambda: self._forward(inputs, clean_plan, use_cache=True, **cache),
            min(starts, default=total),
        )
        evaluations = self.n_layers * total
        p_steps = [
            _answer_probability(clean.logits[:, seq.prompt_len - 1 + i], tok, self.temperature).double().cpu()
            for i, tok in enumerate(seq.answer)
        ]
        # Windows whose affected layers are the same give the same numbers: one batch element per set;
        # pathways that re-run the same rows at every step share batches.
        by_centre: dict[str, list[frozenset[int]]] = {}
        groups: dict[tuple[_Step | None, ...], list[tuple[Pathway, frozenset[int]]]] = {}
        for pathway in pathways:
            plan = plans[pathway.name]
            sets = [
                plan.affected(window_layers(c, k, self.n_layers), self.cross) for c in range(self.n_layers)
            ]
            by_centre[pathway.name] = sets
            groups.setdefault(plan.schedule, []).extend((pathway, s) for s in dict.fromkeys(sets) if s)
        value: dict[tuple[str, frozenset[int]], list[float]] = {}
        for schedule, elements in groups.items():
            if not elements:
                continue
            elements.sort(key=lambda e: min(e[1]))
            rows = max(seq.prompt_len + i - e.start for i, e in enumerate(schedule) if e is not None)
            size = max(1, _ROWS_PER_CALL_PER_TOKEN * total // rows)
            for first in range(0, len(elements), size):
                chunk = elements[first : first + size]
                probs, spent = self._sweep_chunk(seq, schedule, chunk, clean, finish, layers, p_steps)
                evaluations += spent
                for (pathway, layer_set), per_token in zip(chunk, probs.tolist(), strict=True):
                    value[(pathway.name, layer_set)] = per_token
        full_tokens = [float(p) for p in torch.cat(p_steps).tolist()]
        tokens = {
            p.name: [value[(p.name, s)] if s else list(full_tokens) for s in by_centre[p.name]]
            for p in pathways
        }
        out = {name: [math.prod(values) for values in per_layer] for name, per_layer in tokens.items()}
        return KnockoutResult(
            math.prod(full_tokens), out, seq.answer, evaluations, tuple(full_tokens), tokens
        )

    def _sweep_chunk(
        self,
        seq: TeacherForced,
        schedule: tuple[_Step | None, ...],
        chunk: list[tuple[Pathway, frozenset[int]]],
        clean: CleanPass,
        finish: Callable[[torch.Tensor], torch.Tensor],
        layers: list[torch.nn.Module],
        p_steps: list[torch.Tensor],
    ) -> tuple[torch.Tensor, int]:
        """(chunk, answer tokens) probabilities of each answer token under each (pathway, layer set),
        and the evaluations spent."""
        batch = len(chunk)
        steps: list[torch.Tensor] = []
        layer_mask = torch.zeros(batch, self.n_layers, dtype=torch.bool)
        for b, (_, layer_set) in enumerate(chunk):
            layer_mask[b, sorted(layer_set)] = True
        src = torch.tensor([int(p.src) for p, _ in chunk], dtype=torch.int8)
        dst = torch.tensor([int(p.dst) for p, _ in chunk], dtype=torch.int8)
        first_layers = [min(s) for _, s in chunk]
        state: RowState | None = None
        spent = 0
        for step, (token, entry) in enumerate(zip(seq.answer, schedule, strict=True)):
            if entry is None:
                steps.append(p_steps[step].expand(batch))
                state = None
                continue
            length = seq.prompt_len + step
            plan = Plan(
                cross_layers=self.cross,
                mode=self.mode,
                knockout=Knockout(seq.roles(step)[None].expand(batch, -1), src, dst, layer_mask),
                image_rows=seq.image_rows(length)[None].expand(batch, -1),
            )
            logits, state, used = rerun(
                self.adapter,
                layers,
                finish,
                clean,
                self.cross,
                start=entry.start,
                end=length,
                first_layers=first_layers,
                plan=plan,
                reused=state if entry.reuse else None,
            )
            spent += used
            steps.append(_answer_probability(logits, token, self.temperature).double().cpu())
        return torch.stack(steps, dim=1), spent


# One batched re-run call holds at most this many rows (windows × rows) per position of the sequence,
# which keeps a sweep's peak memory within a small multiple of one forward.
_ROWS_PER_CALL_PER_TOKEN = 8


@dataclass(frozen=True)
class _Step:
    """How the fast strategy re-runs one answer step of a pathway: rows `start` … last, on top of the
    previous step's re-run rows when `reuse` (else on top of the clean pass)."""

    start: int
    reuse: bool


@dataclass(frozen=True)
class _PathwayPlan:
    """Where a pathway can change anything in one sample, and the rows re-run at each answer step."""

    self_hit: bool
    cross_hit: bool
    schedule: tuple[_Step | None, ...]

    def affected(self, layers: range, cross: frozenset[int]) -> frozenset[int]:
        """Layers of a window where the pathway blocks something that matters."""
        return frozenset(i for i in layers if (self.cross_hit if i in cross else self.self_hit))

    @classmethod
    def make(cls, seq: TeacherForced, pathway: Pathway, cross: frozenset[int], n_layers: int) -> _PathwayPlan:
        """Rows before the first changed row of a step are the clean ones. Between consecutive steps only
        the previous last row changes role, so when the first changed row stays put, the rows before
        that row are those of the previous step's re-run, and so is that row when its blocked entries
        stay the same."""
        has_self = n_layers > len(cross)
        has_cross = bool(cross) and pathway.src == Role.IMAGE
        schedule: list[_Step | None] = []
        held: int | None = None  # first row re-run at the previous step
        self_hit = cross_hit = False
        for step in range(len(seq.answer)):
            self_rows, cross_rows = _changed_rows(seq, pathway, step, has_self, has_cross)
            self_hit |= bool(self_rows.any())
            cross_hit |= bool(cross_rows.any())
            hits = torch.nonzero(self_rows | cross_rows).flatten()
            if len(hits) == 0:
                schedule.append(None)
                held = None
                continue
            first = int(hits[0])
            last = seq.prompt_len - 1 + step
            entry = _Step(first, False)
            if held == first and not _sees_later_positions(seq, pathway, step, has_self):
                row = last - 1
                same = _row_pattern(seq, pathway, step, row, has_self, has_cross) == _row_pattern(
                    seq, pathway, step - 1, row, has_self, has_cross
                )
                resume = last if same else row
                if resume > first:
                    entry = _Step(resume, True)
            schedule.append(entry)
            held = first
        return cls(self_hit, cross_hit, tuple(schedule))


def _changed_rows(
    seq: TeacherForced, pathway: Pathway, step: int, has_self: bool, has_cross: bool
) -> tuple[torch.Tensor, torch.Tensor]:
    """(S,) bool rows of answer step `step` where the pathway blocks an entry that matters, in
    self-attention and in cross-attention layers. A self-attention key after its row is masked
    anyway; in paper mode a cross-attention row kept away from the image is uniform anyway."""
    roles = seq.roles(step)
    dst = roles == pathway.dst
    none = torch.zeros_like(dst)
    self_rows = dst & (torch.cumsum((roles == pathway.src).int(), 0) > 0) if has_self else none
    cross_rows = none
    if has_cross:
        cross_rows = dst & seq.image_rows(len(roles)) if seq.mode == "paper" else dst
    return self_rows, cross_rows


def _sees_later_positions(seq: TeacherForced, pathway: Pathway, step: int, has_self: bool) -> bool:
    """Whether, at answer step `step`, a self-attention row has every earlier key blocked in paper mode.

    The research code's block value equals the causal mask's, so such a row is uniform over every key of
    the sequence, later positions included: its re-run rows change when the sequence grows by one
    answer token, and cannot be reused from the previous step.
    """
    if seq.mode != "paper" or not has_self:
        return False
    roles = seq.roles(step)
    only_src_so_far = torch.cumprod((roles == pathway.src).int(), 0).bool()
    return bool((only_src_so_far & (roles == pathway.dst)).any())


def _row_pattern(
    seq: TeacherForced, pathway: Pathway, step: int, row: int, has_self: bool, has_cross: bool
) -> tuple[tuple[bool, ...], tuple[bool, ...]]:
    """The entries of `row` the pathway blocks at answer step `step`: self-attention keys, cross rows."""
    self_rows, cross_rows = _changed_rows(seq, pathway, step, has_self, has_cross)
    roles = seq.roles(step)
    keys = tuple((roles[: row + 1] == pathway.src).tolist()) if bool(self_rows[row]) else ()
    return keys, (bool(cross_rows[row]),)


__all__ = [
    "DEFAULT_TEMPERATURE",
    "PAPER_PATHWAYS",
    "KnockoutResult",
    "KnockoutRunner",
    "Pathway",
    "Strategy",
    "window_layers",
]
