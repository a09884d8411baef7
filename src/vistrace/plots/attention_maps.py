"""From captured attention to drawable maps: feature values → image pixels or bare grids, token spans
and pieces, which stage of an instance is its feedback.

Kept free of matplotlib so that geometry can be tested on its own.
"""

from __future__ import annotations

import math
import re
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch

from vistrace.adapters import Geometry
from vistrace.capture.generate import StageCapture
from vistrace.capture.pooling import pool_map, pool_tokens, without_eos
from vistrace.runs.attend_io import read_record

LEADING_SPACE_MARKS = ("Ġ", "▁")
NORMALIZED_SIZE = 96


def draw_order(geometry: Geometry) -> np.ndarray:
    """Indices of the features that have a box on the image, larger boxes first (ties in feature
    order): drawn in this order, a smaller box lands over a larger one, so a map shows the finest
    view where views overlap (tiles over a global image or thumbnail, a high-resolution grid over
    its base image)."""
    drawn = np.flatnonzero(np.isfinite(geometry.boxes).all(axis=1))
    boxes = geometry.boxes[drawn]
    areas = (boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1])
    return drawn[np.argsort(-areas, kind="stable")]


def feature_raster(
    values: np.ndarray | torch.Tensor, geometry: Geometry, size: tuple[int, int] | None = None
) -> np.ndarray:
    """(H, W) float map over the image: each pixel whose centre lies in a feature's box takes that
    feature's value; NaN where no feature covers it. `values`: (N,). `size`: (W, H) of the output,
    default the original image size; boxes are scaled to it.

    Where boxes of several views overlap (a global image or a thumbnail under its tiles, LLaVA-NeXT's
    base image under its high-resolution grid, Gemma 3's whole image under its crops) the smaller box
    is drawn over the larger: the map shows the finest view, the bare grid (`grid_canvas`) every view."""
    vector = np.asarray(values, dtype=float).reshape(-1)
    if vector.shape[0] != geometry.num_features:
        raise ValueError(f"{vector.shape[0]} values for {geometry.num_features} image features")
    width, height = geometry.image_size
    out_w, out_h = size or (width, height)
    scale_x, scale_y = out_w / width, out_h / height
    raster = np.full((out_h, out_w), np.nan)
    for index in draw_order(geometry):
        x0, y0, x1, y1 = geometry.boxes[index]
        c0, c1 = math.ceil(x0 * scale_x - 0.5), math.ceil(x1 * scale_x - 0.5)
        r0, r1 = math.ceil(y0 * scale_y - 0.5), math.ceil(y1 * scale_y - 0.5)
        raster[max(r0, 0) : min(r1, out_h), max(c0, 0) : min(c1, out_w)] = vector[index]
    return raster


def normalized_raster(values: np.ndarray | torch.Tensor, geometry: Geometry) -> np.ndarray:
    """(96, 96) `feature_raster` with the image stretched to a square, to average differing layouts."""
    return feature_raster(values, geometry, (NORMALIZED_SIZE, NORMALIZED_SIZE))


def _contains(outer: tuple[float, ...], inner: tuple[float, ...]) -> bool:
    tolerance = 1e-6
    return (
        outer[0] <= inner[0] + tolerance
        and outer[1] <= inner[1] + tolerance
        and outer[2] >= inner[2] - tolerance
        and outer[3] >= inner[3] - tolerance
    )


def _placements(geometry: Geometry) -> tuple[list[tuple[int, int]], tuple[int, int]]:
    """(top, left) cell of every grid on the bare canvas, and the canvas (rows, cols).

    Tiles sit as on the model's canvas (by their boxes' corners), each in a `rows` × `cols` slot
    (the largest grid's). A view whose box holds another grid's (a global image, a thumbnail, Gemma
    3's whole image beside its crops) is no tile: such views follow to the right, in order, one empty
    column apart."""
    grids = geometry.grids
    if not grids:
        return [], (0, 0)
    overview = [
        any(other is not grid and other.box != grid.box and _contains(grid.box, other.box) for other in grids)
        for grid in grids
    ]
    tiles = [grid for grid, is_overview in zip(grids, overview, strict=True) if not is_overview]
    rows = max(grid.rows for grid in grids)
    cols = max(grid.cols for grid in grids)
    xs = sorted({round(grid.box[0], 3) for grid in tiles})
    ys = sorted({round(grid.box[1], 3) for grid in tiles})
    across = len(xs) * cols
    placements = []
    for grid, is_overview in zip(grids, overview, strict=True):
        if is_overview:
            placements.append((0, across + 1))
            across += 1 + grid.cols
        else:
            placements.append(
                (ys.index(round(grid.box[1], 3)) * rows, xs.index(round(grid.box[0], 3)) * cols)
            )
    return placements, (max(len(ys) * rows, rows), across)


def grid_canvas(values: np.ndarray | torch.Tensor, geometry: Geometry) -> np.ndarray:
    """The bare map: each tile's patch grid (rows, cols), tiles placed as on the model's canvas, then
    any view that holds the tiles (a global image, a thumbnail) to their right, one empty column apart.

    `values`: (N,). Returns the canvas with NaN where no grid is; CLS and other non-patch features are
    not drawn. LLaVA-1.5 gives its 24×24 grid."""
    vector = np.asarray(values, dtype=float).reshape(-1)
    if not geometry.grids:
        raise ValueError("the geometry has no patch grid")
    placements, shape = _placements(geometry)
    canvas = np.full(shape, np.nan)
    for grid, (top, left) in zip(geometry.grids, placements, strict=True):
        block = vector[grid.first : grid.first + grid.rows * grid.cols].reshape(grid.rows, grid.cols)
        canvas[top : top + grid.rows, left : left + grid.cols] = block
    return canvas


def layout_key(geometry: Geometry) -> tuple[object, ...]:
    """Equal for geometries whose feature i sits at the same place of the same bare grid."""
    placements, shape = _placements(geometry)
    grids = tuple(
        (g.first, g.rows, g.cols, position) for g, position in zip(geometry.grids, placements, strict=True)
    )
    return geometry.num_features, shape, grids


def strip_mark(token: str) -> str:
    """`token` without one leading-space mark of the tokenizer ('Ġ' byte-level BPE, '▁' SentencePiece)."""
    return token[1:] if token[:1] in LEADING_SPACE_MARKS else token


def output_pieces(stage: StageCapture) -> tuple[str, ...]:
    """The text of each output token of `stage` (its decoded pieces, else the tokens with a leading-space
    mark turned into a space)."""
    return stage.output_pieces or tuple(re.sub(r"^[Ġ▁]", " ", t) for t in stage.output_tokens)


def parse_spans(spans: str | Sequence[str | Sequence[str]]) -> list[list[str]]:
    """Spans of tokens: `"rather,silver,."` → `[["rather", "silver", "."]]`; a list gives one span
    per item (a string item is split on commas, a list item is taken as is)."""
    items: Sequence[str | Sequence[str]] = [spans] if isinstance(spans, str) else spans
    parsed = []
    for item in items:
        tokens = item.split(",") if isinstance(item, str) else list(item)
        tokens = [strip_mark(t.strip()) for t in tokens]
        if not tokens or any(t == "" for t in tokens):
            raise ValueError(f"empty token in span {item!r}; write spans as comma-separated tokens")
        parsed.append(tokens)
    return parsed


def find_span(output_tokens: Sequence[str], span: Sequence[str]) -> tuple[int, int]:
    """[start, end) of the first consecutive run of `output_tokens` equal to `span`, both compared
    without leading-space marks; `ValueError` listing the output tokens when there is none."""
    stripped = [strip_mark(token) for token in output_tokens]
    wanted = [strip_mark(token) for token in span]
    size = len(wanted)
    for start in range(len(stripped) - size + 1):
        if stripped[start : start + size] == wanted:
            return start, start + size
    shown = " ".join(repr(t) for t in stripped[:200])
    raise ValueError(f"span {','.join(span)!r} is not a run of the output tokens: {shown}")


def token_maps(stage: StageCapture, pool: str, top_k: int) -> torch.Tensor:
    """(T, N) per-token maps of a stage, pooled over layers and heads (EOS kept, for span indexing)."""
    return pool_tokens(stage.image_attention, pool, top_k)


def feedback_stage(directory: Path, stages: dict[str, StageCapture]) -> str | None:
    """The "Feedback" stage of the instance in `directory`: the feedback of the last round whose
    revision was adopted, else of round 1; None without a feedback stage."""
    record = read_record(directory) or {}
    adopted = (record.get("log") or {}).get("adopted_round")
    if adopted and f"feedback_{adopted}" in stages:
        return f"feedback_{adopted}"
    return "feedback_1" if "feedback_1" in stages else None


def stage_map(stage: StageCapture, pool: str, top_k: int, tokens: str, top_l: int | None) -> np.ndarray:
    """(N,) map of a stage: `pool` over layers and heads, `tokens` over tokens, EOS dropped."""
    attention = without_eos(stage.image_attention, stage.ends_with_eos)
    return pool_map(attention, pool=pool, top_k=top_k, tokens=tokens, top_l=top_l).numpy()


__all__ = [
    "LEADING_SPACE_MARKS",
    "feature_raster",
    "feedback_stage",
    "find_span",
    "grid_canvas",
    "layout_key",
    "normalized_raster",
    "output_pieces",
    "parse_spans",
    "stage_map",
    "strip_mark",
    "token_maps",
]
