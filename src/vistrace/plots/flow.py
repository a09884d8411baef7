"""Flow curves of a knockout run: mean change in answer probability per layer, per pathway."""

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

from vistrace.runs.trace import read_results


@dataclass(frozen=True)
class FlowOptions:
    """`min_p_full`: drop samples whose unblocked probability is below it (paper: 0.5; None keeps all).
    `clip_increases`: clip positive changes to 0 as the paper does. `stages`: layer groups for the bars."""

    min_p_full: float | None = 0.5
    clip_increases: bool = True
    stages: int = 4


def change_percent(p_full: float, probs: list[float], clip_increases: bool) -> np.ndarray:
    """(L,) change `(p_blocked - p_full) / p_full × 100`, optionally clipped at 0."""
    change = (np.asarray(probs, dtype=float) - p_full) / p_full * 100.0
    return np.minimum(change, 0.0) if clip_increases else change


def flow_curves(run_dir: Path, options: FlowOptions) -> dict[tuple[Any, ...], dict[str, Any]]:
    """Mean change per layer grouped by (dataset, category, mode, k) then pathway; a sample of several
    categories (``categories``, e.g. DocVQA question types) is counted in each."""
    groups: dict[tuple[Any, ...], dict[str, list[np.ndarray]]] = defaultdict(lambda: defaultdict(list))
    meta: dict[tuple[Any, ...], dict[str, Any]] = {}
    for record in read_results(run_dir):
        if options.min_p_full is not None and record["p_full"] < options.min_p_full:
            continue
        if record["p_full"] <= 0:
            continue
        change = change_percent(record["p_full"], record["probs"], options.clip_increases)
        for category in dict.fromkeys(record.get("categories") or [record.get("category") or "all"]):
            key = (record.get("dataset") or "data", category, record["mode"], record["k"])
            groups[key][record["pathway"]].append(change)
            meta[key] = {"cross_layers": record.get("cross_layers", []), "n_layers": len(record["probs"])}
    out: dict[tuple[Any, ...], dict[str, Any]] = {}
    for key, by_pathway in groups.items():
        out[key] = {
            **meta[key],
            "curves": {p: np.mean(np.stack(v), axis=0) for p, v in by_pathway.items()},
            "counts": {p: len(v) for p, v in by_pathway.items()},
        }
    return out


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
        fig, ax = plt.subplots(figsize=(7, 3.6))
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
        ax.set_ylabel("change in answer probability (%)")
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
        written.extend(_stage_bars(target, stem, data, options.stages))
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
