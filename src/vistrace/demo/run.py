"""`vistrace demo`: every workflow of both papers on the built-in models, into one folder.

Per family: eval → score → build → trace (the paper's four pathways, k = 3 and 9) → flow figures →
attend with the Volcano loop (the questions the model got wrong first, where a critique has
something to fix) → Figure 5 / Figure 4 maps and text → the pointing game. ``summary.txt`` gathers
the accuracy, knockout and pointing tables; every figure lies under ``<out>/<family>/figures``.
"""

from __future__ import annotations

import logging
import time
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from vistrace.data import read_vqav2
from vistrace.demo.pointing import format_pointing, pointing_game
from vistrace.demo.world import COLOURS, COUNT_ANSWERS, KINDS, Sample, make_split
from vistrace.demo.writers import question_ids, write_volcano_input, write_vqav2
from vistrace.knockout.sweep import PAPER_PATHWAYS
from vistrace.models.builtin import resolve_model_dir
from vistrace.models.loading import LoadedModel, load
from vistrace.plots.attention import plot_avg_attention, plot_image_heatmap, plot_text_heatmap
from vistrace.plots.attention_maps import strip_mark
from vistrace.plots.flow import FlowOptions, change_percent, plot_flow
from vistrace.runs.attend import run_volcano
from vistrace.runs.attend_io import instance_dir, load_stages, read_log
from vistrace.runs.evaluate import evaluate, read_jsonl
from vistrace.runs.export import read_results
from vistrace.runs.scoring import build_analysis_set, is_correct, score_run
from vistrace.runs.trace import trace

log = logging.getLogger(__name__)

DATA_SEED = 2024
SPAN_WORDS = frozenset((*COLOURS, *KINDS, *COUNT_ANSWERS, "yes", "no", "top", "bottom", "left", "right"))


@dataclass(frozen=True)
class DemoSettings:
    """How much the demo does: ``scenes`` for eval (3 questions each), ``per_category`` traced
    questions per question kind, ``ks`` window sizes, ``attend`` Volcano instances, ``pointing``
    scenes for the pointing game, ``max_new_tokens`` per Volcano stage."""

    scenes: int = 40
    per_category: int = 4
    ks: tuple[int, ...] = (3, 9)
    attend: int = 12
    pointing: int = 40
    max_new_tokens: int = 24


def _model_dir(family: str) -> tuple[Path, str]:
    """The shipped demo model of `family`, or the random tiny one when none is shipped."""
    try:
        return resolve_model_dir(f"demo:{family}"), "trained demo model"
    except (FileNotFoundError, ImportError, ValueError) as error:
        log.warning("no trained demo model for %s (%s); using a random tiny model", family, error)
        return resolve_model_dir(f"tiny:{family}"), "random tiny model (figures show no real behaviour)"


Changes = dict[int, dict[str, list[np.ndarray]]]


def changes_by_k(run_dir: Path, min_p_full: float = 0.5) -> Changes:
    """Per k and pathway, the (L,) change curves of the samples with ``p_full >= min_p_full``."""
    changes: Changes = defaultdict(lambda: defaultdict(list))
    for record in read_results(run_dir):
        if record["p_full"] >= min_p_full:
            changes[record["k"]][record["pathway"]].append(
                change_percent(record["p_full"], record["probs"], clip_increases=False)
            )
    return changes


def knockout_summary(changes: Changes, min_p_full: float = 0.5) -> str:
    """Which pathway and which layers matter most: per k and pathway of ``changes`` (`changes_by_k`),
    the largest mean drop in answer probability and the window centre where it happens; pathways
    sorted by that drop."""
    if not changes:
        return f"  no traced sample has p_full >= {min_p_full}"
    lines = []
    for k in sorted(changes):
        by_pathway = {p: np.mean(np.stack(c), axis=0) for p, c in changes[k].items()}
        ranked = sorted(by_pathway.items(), key=lambda item: float(item[1].min()))
        samples = len(next(iter(changes[k].values())))
        lines.append(f"  k={k} ({samples} samples with p_full >= {min_p_full}):")
        for pathway, curve in ranked:
            layer = int(curve.argmin())
            lines.append(
                f"    {pathway:<18} largest drop {curve.min():7.1f}% at the window centred on layer {layer}"
            )
    return "\n".join(lines)


def attend_samples(samples: Sequence[Sample], predictions: Path, count: int) -> list[Sample]:
    """``count`` samples for the Volcano loop: those answered wrongly in ``predictions`` first."""
    correct = {
        str(r["id"]): is_correct(r, "score>0") for r in read_jsonl(predictions) if not r.get("skipped")
    }
    ids = [str(i) for i in question_ids(samples)]
    wrong = [s for s, i in zip(samples, ids, strict=True) if correct.get(i) is False]
    right = [s for s, i in zip(samples, ids, strict=True) if correct.get(i) is True]
    return (wrong + right)[:count]


def _drawable(attend_dir: Path, entry: dict[str, Any]) -> bool:
    """Whether the initial answer and the entry's feedback both generated tokens (EOS aside)."""
    stages = load_stages(instance_dir(attend_dir, int(entry["index"])))
    feedback = stages.get(f"feedback_{entry.get('adopted_round') or 1}")
    return feedback is not None and bool(stages["initial"].content_tokens) and bool(feedback.content_tokens)


def _heatmap_instance(attend_dir: Path) -> tuple[int, list[list[str]]] | None:
    """The instance to draw Figure 4 for (the first drawable one with an adopted revision, else the
    first drawable one) and a span of its feedback: the last answer word (colour, shape, count,
    position, yes/no) in it; None when no instance has both stages non-empty."""
    entries = [e for e in read_log(attend_dir)["entries"] if not e.get("skipped")]
    drawable = [e for e in entries if _drawable(attend_dir, e)]
    if not drawable:
        return None
    entry = next((e for e in drawable if e.get("adopted_round")), drawable[0])
    index = int(entry["index"])
    feedback = load_stages(instance_dir(attend_dir, index))[f"feedback_{entry.get('adopted_round') or 1}"]
    words = [t for t in feedback.output_tokens if strip_mark(t).lower() in SPAN_WORDS]
    return index, [[words[-1]]] if words else []


def _attention_figures(attend_dir: Path, figures: Path) -> list[str]:
    entries = [e for e in read_log(attend_dir)["entries"] if not e.get("skipped")]
    notes = []
    adopted = [e for e in entries if e.get("adopted_round")]
    if any(_drawable(attend_dir, e) for e in adopted):
        plot_avg_attention(attend_dir, figures)
        notes.append("  Figure 5 drawn over the instances whose revision was adopted")
    else:
        plot_avg_attention(attend_dir, figures, instances="all")
        why = "no adopted revision has a non-empty feedback" if adopted else "no revision was adopted"
        notes.append(f"  {why}: Figure 5 drawn over every instance instead")
    chosen = _heatmap_instance(attend_dir)
    if chosen is None:
        notes.append("  Figure 4 not drawn: no instance has both an initial answer and a feedback")
        return notes
    index, spans = chosen
    plot_text_heatmap(attend_dir, index, figures)
    plot_image_heatmap(attend_dir, index, spans, figures)
    shown = f" with the span {spans[0][0]!r}" if spans else ""
    notes.append(f"  Figure 4 drawn for instance {index}{shown}")
    return notes


def _volcano_summary(attend_dir: Path) -> str:
    entries = [e for e in read_log(attend_dir)["entries"] if not e.get("skipped")]
    adopted = sum(1 for e in entries if e.get("adopted_round"))
    return f"Volcano loop: {len(entries)} instances, revision adopted in {adopted}"


def run_family(
    loaded: LoadedModel, samples: Sequence[Sample], data_dir: Path, root: Path, settings: DemoSettings
) -> list[str]:
    """Every workflow for one model; returns the summary lines."""
    data = write_vqav2(samples, data_dir)
    examples = read_vqav2(data.questions, data.annotations, data.questions.parent / "images").examples
    evaluate(loaded, examples, root / "eval", dataset="vqav2", batch_size=8)
    lines = [score_run(root / "eval").format_table()]
    analysis = root / "analysis.jsonl"
    lines.append(
        build_analysis_set(
            root / "eval", analysis, per_category=settings.per_category, seed=42
        ).format_table()
    )
    if analysis.stat().st_size == 0:
        lines.append("  no correct answers: tracing the model's own answers to every question instead")
        build_analysis_set(
            root / "eval", analysis, per_category=settings.per_category, seed=42, correct_rule="score>=0"
        )
    figures = root / "figures"
    trace(loaded, analysis, root / "trace", pathways=list(PAPER_PATHWAYS), ks=list(settings.ks))
    changes = changes_by_k(root / "trace")
    plot_flow(root / "trace", figures / "flow", FlowOptions() if changes else FlowOptions(min_p_full=None))
    lines.append(
        "knockout: mean change in the answer's probability (strict mode)\n" + knockout_summary(changes)
    )
    chosen = attend_samples(samples, root / "eval" / "predictions.jsonl", settings.attend)
    volcano_input = write_volcano_input(chosen, root / "volcano_input").input_json
    run_volcano(loaded, volcano_input, root / "attend", volcano=True, max_new_tokens=settings.max_new_tokens)
    lines.append(_volcano_summary(root / "attend"))
    lines.extend(_attention_figures(root / "attend", figures / "attention"))
    pointing = make_split(settings.pointing, DATA_SEED + 1)
    lines.append(format_pointing(loaded.adapter.model_type, pointing_game(loaded, pointing)))
    return lines


def run_demo(
    out_dir: str | Path, families: Sequence[str] = ("llava", "mllama"), settings: DemoSettings | None = None
) -> Path:
    """Run every workflow for each of ``families`` into ``out_dir``; returns ``summary.txt``."""
    settings = settings or DemoSettings()
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()
    samples = make_split(settings.scenes, seed=DATA_SEED)
    summary = [f"vistrace demo: {len(samples)} synthetic questions about coloured shapes"]
    for family in families:
        model_dir, what = _model_dir(family)
        summary.append(f"\n== {family}: {what} ({model_dir})")
        summary.extend(run_family(load(model_dir), samples, out / "data" / "vqav2", out / family, settings))
    summary.append(f"\ntook {time.perf_counter() - start:.0f} s; figures under {out}/<family>/figures")
    text = "\n".join(summary)
    (out / "summary.txt").write_text(text + "\n", encoding="utf-8")
    print(text)
    return out / "summary.txt"
