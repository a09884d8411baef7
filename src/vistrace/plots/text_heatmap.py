"""Figure 4, step 2, of the attention workflow: the initial answer and the feedback of one instance,
each token coloured by its attention to the image (`vistrace.capture.pooling.token_image_attention`),
as PNG/PDF and HTML with its numbers beside it (JSON, CSV)."""

from __future__ import annotations

import html
from collections.abc import Sequence
from pathlib import Path

import matplotlib.pyplot as plt
import numpy as np
from matplotlib import colors
from matplotlib.patches import Rectangle

from vistrace.capture.generate import StageCapture
from vistrace.capture.pooling import token_image_attention
from vistrace.plots.attention_maps import feedback_stage, output_pieces
from vistrace.plots.figure_files import save_figure, write_csv, write_json
from vistrace.runs.attend_io import instance_dir, load_stages

TEXT_CMAP = "BuGn"
TEXT_WIDTH = 96
FONT_SIZE = 9.0
_CHAR_INCHES = 0.602 * FONT_SIZE / 72
_LINE_INCHES = 1.55 * FONT_SIZE / 72


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


def plot_text_heatmap(run_dir: str | Path, instance_idx: int, out_dir: str | Path) -> list[Path]:
    """Figure 4, step 2: the initial answer and the feedback with every token coloured by its
    attention to the image (sum over features, L2 over heads, L2 over layers), one colour scale.

    Writes `text_heatmap_<idx>` as PNG, PDF, HTML (escaped text), JSON and CSV; returns the paths.
    """
    directory = instance_dir(run_dir, instance_idx)
    stages = load_stages(directory)
    chosen = [("Initial", "initial")]
    feedback = feedback_stage(directory, stages)
    if feedback is not None:
        chosen.append((f"Feedback (round {feedback.split('_')[1]})", feedback))
    weights = {name: token_image_attention(stages[name].image_attention).numpy() for _, name in chosen}
    everything = np.concatenate(list(weights.values()))
    norm = colors.Normalize(vmin=float(everything.min()), vmax=float(everything.max()))
    cmap = plt.get_cmap(TEXT_CMAP)
    layouts = {name: _display_lines(output_pieces(stages[name])) for _, name in chosen}
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
    paths = save_figure(fig, out, stem)
    paths.append(_text_html(out / f"{stem}.html", chosen, stages, weights, norm))
    numbers = {
        name: {
            "label": label,
            "tokens": list(stages[name].output_tokens),
            "pieces": list(output_pieces(stages[name])),
            "weights": weights[name].tolist(),
        }
        for label, name in chosen
    }
    paths.append(write_json(out / f"{stem}.json", numbers))
    rows = [
        [name, position, token, piece, float(weight)]
        for _, name in chosen
        for position, (token, piece, weight) in enumerate(
            zip(stages[name].output_tokens, output_pieces(stages[name]), weights[name], strict=True)
        )
    ]
    paths.append(write_csv(out / f"{stem}.csv", ["stage", "position", "token", "piece", "weight"], rows))
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
        for piece, weight in zip(output_pieces(stages[name]), weights[name], strict=True):
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


__all__ = ["plot_text_heatmap"]
