"""Figures of the attention workflow, read from a run directory written by `run_volcano`.

- `plot_avg_attention` (the paper's Figure 5): the map of Initial vs Feedback averaged over the
  instances whose revision was adopted, one shared colour scale.
- `plot_text_heatmap` (Figure 4, step 2; `vistrace.plots.text_heatmap`, importable here): the initial
  answer and the feedback, each token coloured by its attention to the image
  (`vistrace.capture.pooling.token_image_attention`), as PNG/PDF and HTML.
- `plot_image_heatmap` (Figure 4, step 3): Initial (all tokens), Feedback (all tokens) and one panel
  per selected span of feedback tokens, as bare feature grids and as overlays on the image, one
  colour scale clipped at the 0.995 quantile.

"Feedback" is the feedback of the last round whose revision was adopted (the research code's
"best" feedback), or of round 1 when no revision was adopted. Every figure is written as PNG and
PDF with its numbers beside it (JSON, and CSV where they form a table).
"""

from __future__ import annotations

import logging
import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import matplotlib.pyplot as plt
import numpy as np
from matplotlib import colors
from PIL import Image

from vistrace.capture.pooling import shared_top_l, tokens_top_l_mean
from vistrace.plots.attention_maps import (
    feature_raster,
    feedback_stage,
    find_span,
    grid_canvas,
    layout_key,
    normalized_raster,
    output_pieces,
    parse_spans,
    stage_map,
    token_maps,
)
from vistrace.plots.figure_files import save_figure, write_csv, write_json
from vistrace.plots.text_heatmap import plot_text_heatmap
from vistrace.runs.attend_io import instance_dir, load_preview, load_stages, read_log

logger = logging.getLogger(__name__)

CLIP_QUANTILE = 0.995
MAP_CMAP = "viridis"
OVERLAY_ALPHA = 0.55


def _json_grid(canvas: np.ndarray) -> list[list[float | None]]:
    return [[float(v) if np.isfinite(v) else None for v in row] for row in canvas]


def _finite(values: np.ndarray) -> np.ndarray:
    return values[np.isfinite(values)]


def _bare(ax: Any, canvas: np.ndarray, norm: colors.Normalize, title: str) -> None:
    ax.imshow(np.ma.masked_invalid(canvas), cmap=MAP_CMAP, norm=norm, interpolation="nearest")
    ax.set_title(title, fontsize=10)
    ax.set_xticks([])
    ax.set_yticks([])


def _overlay(
    ax: Any, image: Image.Image, values: np.ndarray, geometry: Any, norm: colors.Normalize, title: str
) -> None:
    display = image.copy()
    display.thumbnail((512, 512))
    raster = feature_raster(values, geometry, display.size)
    ax.imshow(display)
    ax.imshow(
        np.ma.masked_invalid(raster), cmap=MAP_CMAP, norm=norm, alpha=OVERLAY_ALPHA, interpolation="nearest"
    )
    ax.set_title(title, fontsize=10)
    ax.axis("off")


def _colorbar(fig: Any, axes: Any, norm: colors.Normalize, cmap: str, label: str) -> None:
    mappable = plt.cm.ScalarMappable(norm=norm, cmap=cmap)
    fig.colorbar(mappable, ax=axes, shrink=0.8, label=label)


def plot_avg_attention(
    run_dir: str | Path,
    out_dir: str | Path,
    pool: str = "top_k_mean",
    top_k: int = 3,
    tokens: str = "top_l_mean",
    instances: str = "adopted",
) -> list[Path]:
    """Figure 5: Initial vs Feedback attention maps averaged over instances with an adopted revision
    (``instances="adopted"``, the paper's selection) or over every instance with a feedback stage
    (``instances="all"``; the adopted round's feedback, else the first round's).

    Per instance and stage: `pool` over layers and heads (k = `top_k`), then `tokens` over tokens
    (l = the shorter of the two lengths without EOS), EOS dropped. Instances whose feature grids
    share one layout are averaged feature by feature and drawn as bare grids; otherwise (Mllama
    images with different tilings) each map is resampled onto the image's own extent and the
    average is drawn in normalised image coordinates. Returns the written files.
    """
    root, out = Path(run_dir), Path(out_dir)
    entries = [e for e in read_log(root)["entries"] if not e.get("skipped")]
    if instances not in ("adopted", "all"):
        raise ValueError(f"unknown instance selection {instances!r}; choose 'adopted' or 'all'")
    if instances == "adopted":
        adopted = [e for e in entries if e.get("adopted_round")]
        if not adopted:
            raise ValueError(
                f"{root}: none of the {len(entries)} finished instances had its revision adopted; "
                "the average map is taken over those (use instances='all' / --instances all for every one)"
            )
    else:
        adopted = [e for e in entries if (root / e["dir"]).is_dir() and e.get("feedback")]
        if not adopted:
            raise ValueError(f"{root}: no finished instance has a feedback stage (was it run with the loop?)")
    maps: dict[str, list[np.ndarray]] = {"Initial": [], "Feedback": []}
    geometries = []
    used, empty = [], []
    for entry in adopted:
        stages = load_stages(root / entry["dir"])
        initial, feedback = stages["initial"], stages[f"feedback_{entry.get('adopted_round') or 1}"]
        if not initial.content_tokens or not feedback.content_tokens:
            logger.warning("%s: instance %s skipped: a stage generated no tokens", root, entry["index"])
            empty.append(int(entry["index"]))
            continue
        used.append(entry)
        top_l = shared_top_l(initial.content_tokens, feedback.content_tokens)
        maps["Initial"].append(stage_map(initial, pool, top_k, tokens, top_l))
        maps["Feedback"].append(stage_map(feedback, pool, top_k, tokens, top_l))
        geometries.append(initial.geometry)
    if not used:
        raise ValueError(f"{root}: every selected instance has a stage that generated no tokens")
    adopted = used
    same_layout = len({layout_key(g) for g in geometries}) == 1
    if same_layout:
        averages = {name: np.mean(np.stack(values), axis=0) for name, values in maps.items()}
        canvases = {name: grid_canvas(values, geometries[0]) for name, values in averages.items()}
    else:
        canvases = {
            name: np.nanmean(
                np.stack([normalized_raster(v, g) for v, g in zip(values, geometries, strict=True)]), axis=0
            )
            for name, values in maps.items()
        }
    shown = np.concatenate([_finite(c) for c in canvases.values()])
    norm = colors.Normalize(vmin=float(shown.min()), vmax=float(shown.max()))
    fig, axes = plt.subplots(1, 2, figsize=(8, 4), constrained_layout=True)
    for ax, (name, canvas) in zip(axes, canvases.items(), strict=True):
        _bare(ax, canvas, norm, name)
    where = "" if same_layout else ", resampled to image coordinates"
    plural = "instance" if len(adopted) == 1 else "instances"
    chosen = "with the revision adopted" if instances == "adopted" else "(all, adopted or not)"
    title = f"Attention to the image ({pool}); n = {len(adopted)} {plural} {chosen}{where}"
    fig.suptitle(title, fontsize=11)
    _colorbar(fig, list(axes), norm, MAP_CMAP, "attention")
    stem = f"avg_attention_{pool}"
    paths = save_figure(fig, out, stem)
    numbers: dict[str, Any] = {
        "pool": pool,
        "top_k": top_k,
        "tokens": tokens,
        "instances_selected": instances,
        "n_instances": len(adopted),
        "instances": [int(e["index"]) for e in adopted],
        "skipped_no_tokens": empty,
        "same_layout": same_layout,
        "maps": {name: _json_grid(canvas) for name, canvas in canvases.items()},
    }
    paths.append(write_json(out / f"{stem}.json", numbers))
    if same_layout:
        kinds = geometries[0].kinds
        rows = [
            [i, kinds[i], float(a), float(b)]
            for i, (a, b) in enumerate(zip(averages["Initial"], averages["Feedback"], strict=True))
        ]
        paths.append(write_csv(out / f"{stem}.csv", ["feature", "kind", "initial", "feedback"], rows))
    return paths


def _slug(spans: Sequence[Sequence[str]]) -> str:
    tag = "_".join(",".join(span) for span in spans) or "all"
    return re.sub(r"[^A-Za-z0-9.,_-]", "-", tag)[:80]


def plot_image_heatmap(
    run_dir: str | Path,
    instance_idx: int,
    spans: Sequence[str | Sequence[str]],
    out_dir: str | Path,
    *,
    pool: str = "top_k_mean",
    top_k: int = 3,
) -> list[Path]:
    """Figure 4, step 3: maps of Initial (all tokens), Feedback (all tokens) and each span of
    feedback tokens (`"rather,silver,."`, matched ignoring leading-space marks), as bare grids (top
    row) and overlays on the image (bottom row), one colour scale from the minimum to the 0.995
    quantile of all panels (values above it are clipped). "All tokens" is the mean of the top-l
    tokens, l = the shorter of the two lengths without EOS; a span is the mean of its tokens.
    """
    directory = instance_dir(run_dir, instance_idx)
    stages = load_stages(directory)
    feedback_name = feedback_stage(directory, stages)
    if feedback_name is None:
        raise ValueError(f"{directory}: no feedback stage (the run was made without the Volcano loop)")
    initial, feedback = stages["initial"], stages[feedback_name]
    for name, stage in (("initial", initial), (feedback_name, feedback)):
        if not stage.content_tokens:
            raise ValueError(f"{directory}: the {name} stage generated no tokens (only EOS); nothing to draw")
    initial_tokens, feedback_tokens = token_maps(initial, pool, top_k), token_maps(feedback, pool, top_k)
    top_l = shared_top_l(initial.content_tokens, feedback.content_tokens)
    panels: dict[str, np.ndarray] = {
        "Initial (all tokens)": tokens_top_l_mean(initial_tokens[: initial.content_tokens], top_l).numpy(),
        "Feedback (all tokens)": tokens_top_l_mean(feedback_tokens[: feedback.content_tokens], top_l).numpy(),
    }
    parsed = parse_spans(spans)
    located = {}
    for span in parsed:
        start, end = find_span(feedback.output_tokens, span)
        shown = "".join(output_pieces(feedback)[start:end]).strip()
        panels[f"Feedback ('{shown}')"] = feedback_tokens[start:end].mean(dim=0).numpy()
        located[",".join(span)] = [start, end]
    stacked = np.stack(list(panels.values()))
    vmax = float(np.quantile(stacked, CLIP_QUANTILE, method="nearest"))
    vmin = float(stacked.min())
    norm = colors.Normalize(vmin=vmin, vmax=max(vmax, vmin + 1e-12))
    clipped = {title: np.minimum(values, vmax) for title, values in panels.items()}
    image = load_preview(directory) or Image.new("RGB", initial.geometry.image_size, (128, 128, 128))
    count = len(clipped)
    fig, axes = plt.subplots(2, count, figsize=(3 * count + 1, 6), squeeze=False, constrained_layout=True)
    for column, (title, values) in enumerate(clipped.items()):
        _bare(axes[0, column], grid_canvas(values, initial.geometry), norm, title)
        _overlay(axes[1, column], image, values, initial.geometry, norm, "")
    _colorbar(
        fig, axes.ravel().tolist(), norm, MAP_CMAP, f"attention (clipped at the {CLIP_QUANTILE} quantile)"
    )
    out = Path(out_dir)
    stem = f"image_heatmap_{instance_idx}_{_slug(parsed)}"
    paths = save_figure(fig, out, stem)
    numbers = {
        "pool": pool,
        "top_k": top_k,
        "top_l": top_l,
        "feedback_stage": feedback_name,
        "spans": located,
        "vmin": vmin,
        "vmax_clip": vmax,
        "panels": {title: values.tolist() for title, values in panels.items()},
    }
    paths.append(write_json(out / f"{stem}.json", numbers))
    header = ["feature", "kind", *panels]
    rows = [
        [i, kind, *(float(v[i]) for v in panels.values())] for i, kind in enumerate(initial.geometry.kinds)
    ]
    paths.append(write_csv(out / f"{stem}.csv", header, rows))
    return paths


__all__ = [
    "feature_raster",
    "find_span",
    "grid_canvas",
    "plot_avg_attention",
    "plot_image_heatmap",
    "plot_text_heatmap",
]
