"""Flow curves of a knockout run: mean change in answer probability per layer, per pathway.

Under another score (`FlowOptions.score`, :mod:`vistrace.knockout.scores`) the curves are recomputed
from the records' per-token probabilities; a run folder with `layer_probs.jsonl` (`vistrace trace
--layer-probs`) adds a panel of the clean answer's mean score after every layer. With
`FlowOptions.by_word`, one more figure per pathway: the mean change per layer of the answer's
content words, function words (NLTK's English stop-word list) and punctuation
(:mod:`vistrace.knockout.words`)."""

from __future__ import annotations

import csv
import json
import re
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import matplotlib.pyplot as plt
import numpy as np
import torch

from vistrace.knockout.scores import SCORES, change, score
from vistrace.knockout.words import WORD_KINDS, Word, word_change
from vistrace.runs.export import (
    read_layer_probs,
    record_score,
    record_scores,
    token_probabilities,
)
from vistrace.runs.trace import read_results


@dataclass(frozen=True)
class FlowOptions:
    """`min_p_full`: drop samples whose unblocked probability is below it (paper: 0.5; None keeps all).
    `clip_increases`: clip positive changes to 0 as the paper does. `stages`: layer groups for the bars.
    `score`: recompute the curves under this score (None: each record's own). `by_word`: also draw the
    mean change per word class, one figure per pathway."""

    min_p_full: float | None = 0.5
    clip_increases: bool = True
    stages: int = 4
    score: str | None = None
    by_word: bool = False


def _answer_probability(record: dict[str, Any]) -> float | None:
    """The unblocked answer probability (product score) of a record, the `min_p_full` filter's value."""
    values = record_scores(record, "product", recompute=False)
    return None if values is None else values[0]


def _score_change(name: str, full: float, blocked: list[float], clip_increases: bool) -> np.ndarray | None:
    """(L,) change of score `name` (:func:`vistrace.knockout.scores.change`), or None when undefined."""
    if name == "product":
        return change_percent(full, blocked, clip_increases) if full > 0 else None
    values = change(name, torch.tensor(blocked, dtype=torch.float64), torch.tensor(full, dtype=torch.float64))
    result = values.numpy()
    if not np.all(np.isfinite(result)):
        return None
    return np.minimum(result, 0.0) if clip_increases else result


def _passes(record: dict[str, Any], options: FlowOptions) -> bool:
    if options.min_p_full is None:
        return True
    p_answer = _answer_probability(record)
    return p_answer is not None and p_answer >= options.min_p_full


def change_percent(p_full: float, probs: list[float], clip_increases: bool) -> np.ndarray:
    """(L,) change `(p_blocked - p_full) / p_full × 100`, optionally clipped at 0."""
    change = (np.asarray(probs, dtype=float) - p_full) / p_full * 100.0
    return np.minimum(change, 0.0) if clip_increases else change


def flow_curves(run_dir: Path, options: FlowOptions) -> dict[tuple[Any, ...], dict[str, Any]]:
    """Mean change per layer grouped by (dataset, category, mode, k) then pathway; a sample of several
    categories (``categories``, e.g. DocVQA question types) is counted in each."""
    if options.score is not None and options.score not in SCORES:
        raise ValueError(f"--score {options.score!r}: choose one of {', '.join(SCORES)}")
    groups: dict[tuple[Any, ...], dict[str, list[np.ndarray]]] = defaultdict(lambda: defaultdict(list))
    meta: dict[tuple[Any, ...], dict[str, Any]] = {}
    ids: dict[tuple[Any, ...], set[str]] = defaultdict(set)
    for record in read_results(run_dir):
        name = options.score or record_score(record)
        values = record_scores(record, name, recompute=False)
        if values is None or not _passes(record, options):
            continue
        curve = _score_change(name, *values, options.clip_increases)
        if curve is None:
            continue
        for category in dict.fromkeys(record.get("categories") or [record.get("category") or "all"]):
            key = (record.get("dataset") or "data", category, record["mode"], record["k"])
            groups[key][record["pathway"]].append(curve)
            ids[key].add(record["id"])
            meta[key] = {
                "cross_layers": record.get("cross_layers", []),
                "n_layers": len(record["probs"]),
                "score": name,
            }
    layer_probs = read_layer_probs(run_dir)
    out: dict[tuple[Any, ...], dict[str, Any]] = {}
    for key, by_pathway in groups.items():
        out[key] = {
            **meta[key],
            "curves": {p: np.mean(np.stack(v), axis=0) for p, v in by_pathway.items()},
            "counts": {p: len(v) for p, v in by_pathway.items()},
        }
        clean = [
            score(meta[key]["score"], torch.tensor(layer_probs[i], dtype=torch.float64)).numpy()
            for i in sorted(ids[key])
            if i in layer_probs
        ]
        if clean:
            out[key]["layer_curve"] = np.mean(np.stack(clean), axis=0)
            out[key]["layer_count"] = len(clean)
    return out


def word_curves(run_dir: Path, options: FlowOptions) -> dict[tuple[Any, ...], dict[str, Any]]:
    """Per (dataset, mode, k, pathway): for each word class, the mean over the answers' words of that
    class of the word's percentage change per layer (:func:`vistrace.knockout.words.word_change`,
    clipped at 0 with `clip_increases`), and how many answers had such words. Records without words
    or per-token probabilities (older runs) are left out."""
    sums: dict[tuple[Any, ...], dict[str, list[np.ndarray]]] = defaultdict(lambda: defaultdict(list))
    for record in read_results(run_dir):
        tokens = token_probabilities(record)
        words = record.get("words")
        if tokens is None or not isinstance(words, list) or not words or not _passes(record, options):
            continue
        full, blocked = tokens
        parsed = [Word(str(w["text"]), tuple(int(t) for t in w["tokens"]), w["kind"]) for w in words]
        key = (record.get("dataset") or "data", record["mode"], record["k"], record["pathway"])
        for kind, values in word_change(parsed, blocked, full).items():
            curve = values.numpy()
            if np.all(np.isfinite(curve)):
                sums[key][kind].append(np.minimum(curve, 0.0) if options.clip_increases else curve)
    return {
        key: {
            "curves": {kind: np.mean(np.stack(v), axis=0) for kind, v in by_kind.items()},
            "counts": {kind: len(v) for kind, v in by_kind.items()},
        }
        for key, by_kind in sums.items()
    }


def _change_label(name: str) -> str:
    if name == "mean-log":
        return "change in mean log-probability (nats/token)"
    return "change in answer probability (%)" if name == "product" else f"change in {name} score (%)"


def plot_flow(
    run_dir: str | Path, out_dir: str | Path | None = None, options: FlowOptions | None = None
) -> list[Path]:
    """Draw one curve plot and one stage-bar chart per (dataset, category, mode, k); PNG, PDF and CSV."""
    options = options or FlowOptions()
    if options.stages < 1:
        raise ValueError(f"--stages {options.stages}: must be at least 1")
    run = Path(run_dir)
    target = Path(out_dir) if out_dir is not None else run / "figures"
    target.mkdir(parents=True, exist_ok=True)
    written: list[Path] = []
    curves = flow_curves(run, options)
    if not curves:
        raise ValueError(
            f"{run}: no result passes the filters (min p_full {options.min_p_full}); "
            "lower it with --min-p-full 0 to see every sample"
        )
    stems = _file_stems(list(curves))
    for (dataset, category, mode, k), data in sorted(curves.items(), key=lambda kv: str(kv[0])):
        stem = stems[(dataset, category, mode, k)]
        layers = np.arange(data["n_layers"])
        clean = data.get("layer_curve")
        if clean is None:
            fig, ax = plt.subplots(figsize=(7, 3.6))
        else:
            fig, (ax, side) = plt.subplots(1, 2, figsize=(11, 3.6), gridspec_kw={"width_ratios": [3, 2]})
            side.plot(np.arange(len(clean)), clean, marker="o", markersize=3, color="black")
            side.set_xlabel("layer")
            side.set_ylabel(f"clean answer {data['score']} score")
            side.set_title(f"after each layer (n={data['layer_count']})")
        for pathway, curve in sorted(data["curves"].items()):
            ax.plot(layers, curve, marker="o", markersize=3, label=f"{pathway} (n={data['counts'][pathway]})")
        for i, layer in enumerate(data["cross_layers"]):
            ax.axvline(
                layer,
                color="grey",
                alpha=0.3,
                linestyle="--",
                label="cross-attention layer" if i == 0 else None,
            )
        ax.axhline(0, color="black", linewidth=0.6)
        ax.set_xlabel("centre layer of the window")
        ax.set_ylabel(_change_label(data["score"]))
        ax.set_title(f"{dataset} · {category} · {mode} · k={k}")
        ax.legend(fontsize=7)
        fig.tight_layout()
        for suffix in (".png", ".pdf"):
            fig.savefig(target / f"{stem}{suffix}", dpi=150)
            written.append(target / f"{stem}{suffix}")
        plt.close(fig)
        with (target / f"{stem}.csv").open("w", newline="") as handle:
            writer = csv.writer(handle)
            writer.writerow(["pathway", "n", *[f"l{i}" for i in layers]])
            for pathway, curve in sorted(data["curves"].items()):
                writer.writerow([pathway, data["counts"][pathway], *[f"{v:.6g}" for v in curve]])
        written.append(target / f"{stem}.csv")
        if clean is not None:
            with (target / f"{stem}_layers.csv").open("w", newline="") as handle:
                writer = csv.writer(handle)
                writer.writerow(["score", "n", *[f"l{i}" for i in range(len(clean))]])
                writer.writerow([data["score"], data["layer_count"], *[f"{v:.6g}" for v in clean]])
            written.append(target / f"{stem}_layers.csv")
        written.extend(_stage_bars(target, stem, data, options.stages))
    if options.by_word:
        written.extend(_word_figures(run, target, options))
    return written


def _word_figures(run: Path, target: Path, options: FlowOptions) -> list[Path]:
    """One figure (PNG, PDF, CSV) per (dataset, mode, k, pathway) of :func:`word_curves`."""
    curves = word_curves(run, options)
    if not curves:
        raise ValueError(
            f"{run}: --by-word needs records with per-token probabilities and words "
            "(runs of this version of `vistrace trace`) that pass the filters"
        )
    written: list[Path] = []
    for (dataset, mode, k, pathway), data in sorted(curves.items(), key=lambda kv: str(kv[0])):
        stem = re.sub(r"[^\w.-]+", "-", f"words_{dataset}_{mode}_k{k}_{pathway}", flags=re.ASCII)
        kinds = [kind for kind in WORD_KINDS if kind in data["curves"]]
        fig, ax = plt.subplots(figsize=(7, 3.6))
        for kind in kinds:
            curve = data["curves"][kind]
            ax.plot(
                np.arange(len(curve)),
                curve,
                marker="o",
                markersize=3,
                label=f"{kind} (n={data['counts'][kind]})",
            )
        ax.axhline(0, color="black", linewidth=0.6)
        ax.set_xlabel("centre layer of the window")
        ax.set_ylabel("change in word probability (%)")
        ax.set_title(f"{pathway} · {dataset} · {mode} · k={k}")
        ax.legend(fontsize=7)
        fig.tight_layout()
        for suffix in (".png", ".pdf"):
            fig.savefig(target / f"{stem}{suffix}", dpi=150)
            written.append(target / f"{stem}{suffix}")
        plt.close(fig)
        with (target / f"{stem}.csv").open("w", newline="") as handle:
            writer = csv.writer(handle)
            n_layers = max(len(c) for c in data["curves"].values())
            writer.writerow(["kind", "n", *[f"l{i}" for i in range(n_layers)]])
            for kind in kinds:
                writer.writerow([kind, data["counts"][kind], *[f"{v:.6g}" for v in data["curves"][kind]]])
        written.append(target / f"{stem}.csv")
    return written


def _file_stems(keys: list[tuple[Any, ...]]) -> dict[tuple[Any, ...], str]:
    """A distinct file-name stem per (dataset, category, mode, k): unsafe characters become `-`, and
    names that would then collide (categories differing only in punctuation) get `-2`, `-3` …"""
    stems: dict[tuple[Any, ...], str] = {}
    used: set[str] = set()
    for key in sorted(keys, key=str):
        dataset, category, mode, k = key
        base = re.sub(r"[^\w.-]+", "-", f"flow_{dataset}_{category}_{mode}_k{k}", flags=re.ASCII)
        stem, n = base, 1
        while stem.lower() in used:
            n += 1
            stem = f"{base}-{n}"
        used.add(stem.lower())
        stems[key] = stem
    return stems


def _stage_bars(target: Path, stem: str, data: dict[str, Any], n_stages: int) -> list[Path]:
    """Bars of the mean change per stage (consecutive groups of layers)."""
    bounds = np.linspace(0, data["n_layers"], n_stages + 1).round().astype(int)
    labels = [f"{bounds[i]}-{bounds[i + 1] - 1}" for i in range(n_stages)]
    pathways = sorted(data["curves"])
    values = {
        p: [float(np.mean(data["curves"][p][bounds[i] : bounds[i + 1]])) for i in range(n_stages)]
        for p in pathways
    }
    fig, ax = plt.subplots(figsize=(7, 3.2))
    width = 0.8 / max(1, len(pathways))
    for j, pathway in enumerate(pathways):
        ax.bar(np.arange(n_stages) + j * width, values[pathway], width=width, label=pathway)
    ax.set_xticks(np.arange(n_stages) + width * (len(pathways) - 1) / 2, labels)
    ax.set_xlabel("layers")
    ax.set_ylabel("mean change (%)")
    ax.legend(fontsize=7)
    fig.tight_layout()
    paths = []
    for suffix in (".png", ".pdf"):
        fig.savefig(target / f"{stem}_stages{suffix}", dpi=150)
        paths.append(target / f"{stem}_stages{suffix}")
    plt.close(fig)
    (target / f"{stem}_stages.json").write_text(
        json.dumps({"stages": labels, "mean_change": values}, indent=1)
    )
    paths.append(target / f"{stem}_stages.json")
    return paths
