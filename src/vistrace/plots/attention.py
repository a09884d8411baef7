"""Figures of the attention workflow, read from a run directory written by `run_volcano`.

- `plot_avg_attention` (the paper's Figure 5): the map of Initial vs Feedback averaged over the
  instances whose revision was adopted, one shared colour scale.
- `plot_text_heatmap` (Figure 4, step 2): the initial answer and the feedback, each token coloured by
  its attention to the image (`vistrace.capture.pooling.token_image_attention`), as PNG/PDF and HTML.
- `plot_image_heatmap` (Figure 4, step 3): Initial (all tokens), Feedback (all tokens) and one panel
  per selected span of feedback tokens, as bare feature grids and as overlays on the image, one
  colour scale clipped at the 0.995 quantile.

"Feedback" is the feedback of the last round whose revision was adopted (the research code's
"best" feedback), or of round 1 when no revision was adopted. Every figure is written as PNG and
PDF with its numbers beside it (JSON, and CSV where they form a table).
"""

from __future__ import annotations

import csv
import html
import json
import logging
import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import matplotlib.pyplot as plt
import numpy as np
from matplotlib import colors
from matplotlib.patches import Rectangle
from PIL import Image

from vistrace.capture.generate import StageCapture
from vistrace.capture.pooling import shared_top_l, token_image_attention, tokens_top_l_mean
from vistrace.plots.attention_maps import (
    feature_raster,
    find_span,
    grid_canvas,
    layout_key,
    normalized_raster,
    parse_spans,
    stage_map,
    token_maps,
)
from vistrace.runs.attend_io import instance_dir, load_preview, load_stages, read_log, read_record

logger = logging.getLogger(__name__)

CLIP_QUANTILE = 0.995
MAP_CMAP = "viridis"
TEXT_CMAP = "BuGn"
OVERLAY_ALPHA = 0.55
TEXT_WIDTH = 96
FONT_SIZE = 9.0
_CHAR_INCHES = 0.602 * FONT_SIZE / 72
_LINE_INCHES = 1.55 * FONT_SIZE / 72


def _feedback_stage(directory: Path, stages: dict[str, StageCapture]) -> str | None:
    record = read_record(directory) or {}
    adopted = (record.get("log") or {}).get("adopted_round")
    if adopted and f"feedback_{adopted}" in stages:
        return f"feedback_{adopted}"
    return "feedback_1" if "feedback_1" in stages else None


def _save(fig: Any, out_dir: Path, stem: str) -> list[Path]:
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = [out_dir / f"{stem}.png", out_dir / f"{stem}.pdf"]
    for path in paths:
        fig.savefig(path, bbox_inches="tight", dpi=150)
    plt.close(fig)
    return paths


def _write_json(path: Path, data: Any) -> Path:
    path.write_text(json.dumps(data, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
    return path


def _write_csv(path: Path, header: Sequence[str], rows: Sequence[Sequence[Any]]) -> Path:
    with path.open("w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle)
        writer.writerow(header)
        writer.writerows(rows)
    return path


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
    paths = _save(fig, out, stem)
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
    paths.append(_write_json(out / f"{stem}.json", numbers))
    if same_layout:
        kinds = geometries[0].kinds
        rows = [
            [i, kinds[i], float(a), float(b)]
            for i, (a, b) in enumerate(zip(averages["Initial"], averages["Feedback"], strict=True))
        ]
        paths.append(_write_csv(out / f"{stem}.csv", ["feature", "kind", "initial", "feedback"], rows))
    return paths


def _display_lines(pieces: Sequence[str]) -> list[list[tuple[int, int, str]]]:
    """Tokens placed on lines of `TEXT_WIDTH` characters: per line, (token, column, shown text)."""
    lines: list[list[tuple[int, int, str]]] = [[]]
    column = 0
    for index, piece in enumerate(pieces):
        parts = piece.split("\n")
        for part_number, part in enumerate(parts):
            shown = "".join(ch if ch.isprintable() else "\ufffd" for ch in part.replace("\t", "    "))
            if part_number < len(parts) - 1:
                shown += "↵"
            if not shown:
                continue
            if column and column + len(shown) > TEXT_WIDTH:
                lines.append([])
                column = 0
            lines[-1].append((index, column, shown[:TEXT_WIDTH]))
            column += len(shown[:TEXT_WIDTH])
            if part_number < len(parts) - 1:
                lines.append([])
                column = 0
    return lines


def _text_color(background: tuple[float, ...]) -> str:
    red, green, blue = background[:3]
    return "white" if 0.299 * red + 0.587 * green + 0.114 * blue < 0.5 else "black"


def _pieces(stage: StageCapture) -> tuple[str, ...]:
    return stage.output_pieces or tuple(re.sub(r"^[Ġ▁]", " ", t) for t in stage.output_tokens)


def plot_text_heatmap(run_dir: str | Path, instance_idx: int, out_dir: str | Path) -> list[Path]:
    """Figure 4, step 2: the initial answer and the feedback with every token coloured by its
    attention to the image (sum over features, L2 over heads, L2 over layers), one colour scale.

    Writes `text_heatmap_<idx>` as PNG, PDF, HTML (escaped text), JSON and CSV; returns the paths.
    """
    directory = instance_dir(run_dir, instance_idx)
    stages = load_stages(directory)
    chosen = [("Initial", "initial")]
    feedback = _feedback_stage(directory, stages)
    if feedback is not None:
        chosen.append((f"Feedback (round {feedback.split('_')[1]})", feedback))
    weights = {name: token_image_attention(stages[name].image_attention).numpy() for _, name in chosen}
    everything = np.concatenate(list(weights.values()))
    norm = colors.Normalize(vmin=float(everything.min()), vmax=float(everything.max()))
    cmap = plt.get_cmap(TEXT_CMAP)
    layouts = {name: _display_lines(_pieces(stages[name])) for _, name in chosen}
    total_lines = sum(len(lines) + 2 for lines in layouts.values())
    width, height = TEXT_WIDTH * _CHAR_INCHES, total_lines * _LINE_INCHES
    fig = plt.figure(figsize=(width + 0.4, height + 0.9))
    ax = fig.add_axes(
        (0.2 / (width + 0.4), 0.7 / (height + 0.9), width / (width + 0.4), height / (height + 0.9))
    )
    ax.set_xlim(0, TEXT_WIDTH)
    ax.set_ylim(total_lines, 0)
    ax.axis("off")
    row = 0
    for label, name in chosen:
        ax.text(0, row + 0.5, label, va="center", ha="left", fontsize=FONT_SIZE + 1, fontweight="bold")
        row += 1
        for line in layouts[name]:
            for index, column, shown in line:
                background = cmap(norm(float(weights[name][index])))
                ax.add_patch(Rectangle((column, row + 0.05), len(shown), 0.9, color=background, lw=0))
                ax.text(
                    column,
                    row + 0.5,
                    shown,
                    va="center",
                    ha="left",
                    family="monospace",
                    fontsize=FONT_SIZE,
                    color=_text_color(background),
                    parse_math=False,  # a generated "$$" is text, not mathtext
                )
            row += 1
        row += 1
    bar = fig.add_axes((0.25, 0.25 / (height + 0.9), 0.5, 0.12 / (height + 0.9)))
    fig.colorbar(plt.cm.ScalarMappable(norm=norm, cmap=cmap), cax=bar, orientation="horizontal")
    bar.set_xlabel("attention to the image (Σ features, L2 heads, L2 layers)", fontsize=8)
    out = Path(out_dir)
    stem = f"text_heatmap_{instance_idx}"
    paths = _save(fig, out, stem)
    paths.append(_text_html(out / f"{stem}.html", chosen, stages, weights, norm))
    numbers = {
        name: {
            "label": label,
            "tokens": list(stages[name].output_tokens),
            "pieces": list(_pieces(stages[name])),
            "weights": weights[name].tolist(),
        }
        for label, name in chosen
    }
    paths.append(_write_json(out / f"{stem}.json", numbers))
    rows = [
        [name, position, token, piece, float(weight)]
        for _, name in chosen
        for position, (token, piece, weight) in enumerate(
            zip(stages[name].output_tokens, _pieces(stages[name]), weights[name], strict=True)
        )
    ]
    paths.append(_write_csv(out / f"{stem}.csv", ["stage", "position", "token", "piece", "weight"], rows))
    return paths


def _text_html(
    path: Path,
    chosen: Sequence[tuple[str, str]],
    stages: dict[str, StageCapture],
    weights: dict[str, np.ndarray],
    norm: colors.Normalize,
) -> Path:
    cmap = plt.get_cmap(TEXT_CMAP)
    parts = [
        '<!DOCTYPE html><html><head><meta charset="utf-8"><title>Attention to the image</title>'
        "<style>body{font-family:sans-serif;max-width:60em;margin:2em auto}"
        "p{font-family:monospace;font-size:15px;line-height:1.7;white-space:pre-wrap}</style></head><body>"
    ]
    for label, name in chosen:
        spans = []
        for piece, weight in zip(_pieces(stages[name]), weights[name], strict=True):
            background = cmap(norm(float(weight)))
            text = html.escape(piece).replace("\n", "↵\n")
            spans.append(
                f'<span style="background:{colors.to_hex(background)};color:{_text_color(background)}" '
                f'title="{float(weight):.4g}">{text}</span>'
            )
        parts.append(f"<h2>{html.escape(label)}</h2><p>{''.join(spans)}</p>")
    parts.append("</body></html>\n")
    path.write_text("".join(parts), encoding="utf-8")
    return path


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
    feedback_name = _feedback_stage(directory, stages)
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
        shown = "".join(_pieces(feedback)[start:end]).strip()
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
    paths = _save(fig, out, stem)
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
    paths.append(_write_json(out / f"{stem}.json", numbers))
    header = ["feature", "kind", *panels]
    rows = [
        [i, kind, *(float(v[i]) for v in panels.values())] for i, kind in enumerate(initial.geometry.kinds)
    ]
    paths.append(_write_csv(out / f"{stem}.csv", header, rows))
    return paths


__all__ = [
    "feature_raster",
    "find_span",
    "grid_canvas",
    "plot_avg_attention",
    "plot_image_heatmap",
    "plot_text_heatmap",
]
