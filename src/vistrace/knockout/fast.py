"""The fast knockout strategy: the same numbers as the naive one, from a fraction of the work.

The sample runs once (the image encoded once), keeping that clean pass' keys, values and per-layer
hidden states (`vistrace.knockout.clean`). Windows whose affected layers are the same are computed
once. Each remaining window re-runs only what can change: the rows from the first row the pathway
can change (a single row for `*_to_last`), from the window's first affected layer up, starting from
the clean hidden states there and attending to the clean keys before those rows. Windows are
batched, the batch growing as the layers go up. For a multi-token answer, an answer step re-runs only
the rows whose blocked entries differ from the previous step's re-run.

Several samples can be swept together (`FastStrategy.sweep` over a list): windows of different
samples that re-run as many rows at every answer step then share re-run calls, each sample's rows
attending only to its own keys. On a GPU that fills calls a single sample's windows leave small.
"""

from __future__ import annotations

import dataclasses
import itertools
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import torch

from vistrace import compat
from vistrace.adapters import Adapter
from vistrace.hook import Knockout, Plan
from vistrace.hook.plan import KnockoutMode
from vistrace.knockout.clean import CleanPass, clean_pass
from vistrace.knockout.pathways import Pathway, window_layers
from vistrace.knockout.rerun import Rows, RowState, rerun
from vistrace.knockout.result import KnockoutResult, SampleNotSweepable, answer_probability
from vistrace.knockout.sequence import TeacherForced
from vistrace.roles import Role

# One batched re-run call holds at most this many rows (windows × rows) per position of the longest
# sequence in it, which keeps a sweep's peak memory within a small multiple of one forward.
ROWS_PER_CALL_PER_TOKEN = 8

# Per answer step: None (nothing changes) or (rows re-run, whether they extend the previous step's).
_Shape = tuple[tuple[int, bool] | None, ...]


@dataclass
class FastSample:
    """One sample ready for fast sweeps: its clean pass, the clean probability of each answer token
    ((1,) float64 each) and, per pathway, the rows re-run at each answer step."""

    seq: TeacherForced
    clean: CleanPass
    p_steps: list[torch.Tensor]
    plans: dict[str, _PathwayPlan]
    evaluations: int

    @property
    def nbytes(self) -> int:
        """Bytes the clean pass holds: keys, values, hidden states, the layers' argument tensors and the
        adapter's extras (each storage once)."""
        tensors = [*self.clean.keys, *self.clean.values, *self.clean.hidden, self.clean.logits]
        tensors += _tensors_in([*self.clean.layer_arguments, self.clean.extras])
        storages = {t.untyped_storage().data_ptr(): t.untyped_storage().nbytes() for t in tensors}
        return sum(storages.values())


@dataclass(frozen=True)
class _Work:
    """One (sample, pathway, affected layers) element of a sweep."""

    sample: int
    pathway: Pathway
    layers: frozenset[int]


@dataclass(frozen=True)
class _Windows:
    """What the knockout of one sample's elements keeps at every answer step: each element's pathway
    (`src`, `dst`, (B,) int8), its blocked layers ((B, L) bool) and its first one."""

    src: torch.Tensor
    dst: torch.Tensor
    layers: torch.Tensor
    first_layers: list[int]

    @classmethod
    def of(cls, work: list[_Work], n_layers: int) -> _Windows:
        layers = torch.zeros(len(work), n_layers, dtype=torch.bool)
        for b, element in enumerate(work):
            layers[b, sorted(element.layers)] = True
        return cls(
            torch.tensor([int(e.pathway.src) for e in work], dtype=torch.int8),
            torch.tensor([int(e.pathway.dst) for e in work], dtype=torch.int8),
            layers,
            [min(e.layers) for e in work],
        )


@dataclass(frozen=True)
class FastStrategy:
    """The fast strategy for one model. `forward(inputs, plan, **kwargs)` runs the model under `plan`."""

    adapter: Adapter
    model: Any
    cross: frozenset[int]
    n_layers: int
    mode: KnockoutMode
    temperature: float
    forward: Callable[..., Any]

    def clean(self, seq: TeacherForced, pathways: Sequence[Pathway]) -> FastSample:
        """Run `seq`'s clean pass, keeping what re-runs of `pathways` need. `SampleNotSweepable` when a
        re-run from a row the pathways need would not be exact for this sample
        (`Adapter.rerun_start_error`)."""
        total = seq.prompt_len + len(seq.answer) - 1
        plans = {p.name: _PathwayPlan.make(seq, p, self.cross, self.n_layers) for p in pathways}
        starts = [e.start for plan in plans.values() for e in plan.schedule if e is not None]
        inputs = seq.model_inputs(total, self.adapter)
        for start in sorted(set(starts)):
            problem = self.adapter.rerun_start_error(inputs, start)
            if problem is not None:
                raise SampleNotSweepable(
                    f"{problem}: the fast strategy would not be exact; use strategy naive"
                )
        clean_plan = Plan(cross_layers=self.cross, mode=self.mode, image_rows=seq.image_rows(total)[None])
        # A config-less cache: every layer keeps every key (one built from the config keeps only the
        # last `sliding_window - 1` keys of a sliding-window layer, and re-runs need them all).
        cache = compat.full_cache(self.model)
        clean = clean_pass(
            self.adapter,
            self.model,
            lambda: self.forward(inputs, clean_plan, use_cache=True, **cache),
            min(starts, default=total),
        )
        p_steps = [
            answer_probability(clean.logits[:, seq.prompt_len - 1 + i], tok, self.temperature).double().cpu()
            for i, tok in enumerate(seq.answer)
        ]
        # Not needed any more; a view would keep the whole (1, S, V) buffer alive while the pack waits.
        clean = dataclasses.replace(clean, logits=clean.logits.new_empty((1, 0, clean.logits.shape[-1])))
        return FastSample(seq, clean, p_steps, plans, self.n_layers * total)

    def sweep(
        self, samples: Sequence[FastSample], pathways: Sequence[Pathway], k: int
    ) -> list[KnockoutResult]:
        """Every pathway and window centre of each sample; windows of different samples that re-run as
        many rows at every step share calls. Each result counts its sample's clean pass and re-runs."""
        by_centre: list[dict[str, list[frozenset[int]]]] = []
        groups: dict[_Shape, list[_Work]] = {}
        for s, sample in enumerate(samples):
            mine: dict[str, list[frozenset[int]]] = {}
            for pathway in pathways:
                plan = sample.plans[pathway.name]
                sets = [
                    plan.affected(window_layers(c, k, self.n_layers), self.cross)
                    for c in range(self.n_layers)
                ]
                mine[pathway.name] = sets
                # Windows whose affected layers are the same give the same numbers: one element per set.
                work = groups.setdefault(_shape(sample.seq, plan.schedule), [])
                work.extend(_Work(s, pathway, layer_set) for layer_set in dict.fromkeys(sets) if layer_set)
            by_centre.append(mine)
        value: dict[tuple[int, str, frozenset[int]], list[float]] = {}
        spent = [sample.evaluations for sample in samples]
        for shape, elements in groups.items():
            if not elements:
                continue
            elements.sort(key=lambda e: min(e.layers))
            rows = max(entry[0] for entry in shape if entry is not None)
            longest = max(samples[e.sample].seq.prompt_len + len(shape) - 1 for e in elements)
            size = max(1, ROWS_PER_CALL_PER_TOKEN * longest // rows)
            for first in range(0, len(elements), size):
                chunk = elements[first : first + size]
                parts = [
                    (s, list(run))
                    for s, run in itertools.groupby(
                        sorted(chunk, key=lambda e: e.sample), key=lambda e: e.sample
                    )
                ]
                probs, used = self._sweep_chunk(samples, shape, parts)
                for (s, work), per_sample, evaluations in zip(parts, probs, used, strict=True):
                    spent[s] += evaluations
                    for element, per_token in zip(work, per_sample.tolist(), strict=True):
                        value[(s, element.pathway.name, element.layers)] = per_token
        results = []
        for s, sample in enumerate(samples):
            full_tokens = [float(p) for p in torch.cat(sample.p_steps).tolist()]
            tokens = {
                p.name: [
                    value[(s, p.name, layer_set)] if layer_set else list(full_tokens)
                    for layer_set in by_centre[s][p.name]
                ]
                for p in pathways
            }
            results.append(KnockoutResult.from_tokens(sample.seq.answer, full_tokens, tokens, spent[s]))
        return results

    def _sweep_chunk(
        self, samples: Sequence[FastSample], shape: _Shape, parts: list[tuple[int, list[_Work]]]
    ) -> tuple[list[torch.Tensor], list[int]]:
        """Per part (one sample's elements), (elements, answer tokens) probabilities of each answer
        token under each element's knockout; and the evaluations spent on each part."""
        layers = compat.decoder_layers(self.model)
        finish = self.adapter.finisher(self.model)
        steps: list[list[torch.Tensor]] = [[] for _ in parts]
        windows = [_Windows.of(work, self.n_layers) for _, work in parts]
        state: RowState | None = None
        spent = [0] * len(parts)
        for step, entry in enumerate(shape):
            if entry is None:
                for i, (s, work) in enumerate(parts):
                    steps[i].append(samples[s].p_steps[step].expand(len(work)))
                state = None
                continue
            rows, reuse = entry
            calls = []
            for (s, work), window in zip(parts, windows, strict=True):
                seq = samples[s].seq
                length = seq.prompt_len + step
                roles = seq.roles(step)[None].expand(len(work), -1)
                plan = Plan(
                    cross_layers=self.cross,
                    mode=self.mode,
                    knockout=Knockout(roles, window.src, window.dst, window.layers),
                    image_rows=seq.image_rows(length)[None].expand(len(work), -1),
                )
                calls.append(Rows(samples[s].clean, length - rows, length, window.first_layers, plan))
            logits, state, used = rerun(
                self.adapter, layers, finish, self.cross, calls, reused=state if reuse else None
            )
            offset = 0
            for i, (s, work) in enumerate(parts):
                token = samples[s].seq.answer[step]
                mine = logits[offset : offset + len(work)]
                steps[i].append(answer_probability(mine, token, self.temperature).double().cpu())
                offset += len(work)
                spent[i] += used[i]
        return [torch.stack(per_part, dim=1) for per_part in steps], spent


def _tensors_in(value: Any) -> list[torch.Tensor]:
    """Every tensor in nested dicts, lists and tuples."""
    if isinstance(value, torch.Tensor):
        return [value]
    if isinstance(value, dict):
        value = list(value.values())
    if isinstance(value, list | tuple):
        return [t for item in value for t in _tensors_in(item)]
    return []


def _shape(seq: TeacherForced, schedule: tuple[_Step | None, ...]) -> _Shape:
    """A schedule as rows re-run per step: samples with the same shape can share re-run calls."""
    return tuple(
        None if entry is None else (seq.prompt_len + step - entry.start, entry.reuse)
        for step, entry in enumerate(schedule)
    )


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
