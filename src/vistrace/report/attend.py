"""The data of an attention (`attend`) run for the report: per instance the image, every stage's
text and tokens, per-token pooled maps (quantised), and the Figure 5 average maps per stage."""

from __future__ import annotations

import itertools
import json
import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from vistrace.adapters.base import Geometry
from vistrace.capture.generate import StageCapture
from vistrace.capture.pooling import pool_tokens, token_image_attention
from vistrace.plots.attention_maps import NORMALIZED_SIZE, normalized_raster, stage_map, strip_mark
from vistrace.runs.attend_io import load_preview, load_stages, read_log, read_record

from .encode import image_data_uri, quantize_rows, rounded

log = logging.getLogger(__name__)

POOLS: tuple[str, ...] = ("top_k_mean", "mean", "max")
"""Head poolings precomputed for every token (:data:`vistrace.capture.pooling.LAYER_HEAD_POOLS`)."""
TOP_K = 3


def stage_pieces(stage: StageCapture) -> list[str]:
    """The text each generated token adds (`output_pieces`, else the token without its space mark)."""
    if len(stage.output_pieces) == stage.num_tokens:
        return list(stage.output_pieces)
    return [strip_mark(token) for token in stage.output_tokens]


def token_pool_maps(
    stage: StageCapture, pool: str, top_k: int = TOP_K, layers: slice | None = None
) -> np.ndarray:
    """(T, N) per-token maps of `stage` under the head pooling `pool` (EOS kept), over the captured
    layers `layers` (positions on the 2nd axis of `image_attention`; all when None)."""
    attention = stage.image_attention if layers is None else stage.image_attention[:, layers]
    return pool_tokens(attention, pool, top_k).numpy()


def layer_groups(layers: Sequence[int], groups: int) -> list[tuple[str, slice]]:
    """`groups` runs of consecutive captured layers (fewer when there are fewer layers), each as
    (label `first-last` in decoder layer numbers, positions); none when `groups` < 2."""
    if groups < 2 or len(layers) < 2:
        return []
    bounds = np.linspace(0, len(layers), min(groups, len(layers)) + 1).round().astype(int)
    return [
        (f"{layers[lo]}-{layers[hi - 1]}", slice(int(lo), int(hi)))
        for lo, hi in itertools.pairwise(bounds)
        if hi > lo
    ]


class _Geometries:
    """Geometries shared by reference: stages of one layout store one index."""

    def __init__(self) -> None:
        self.items: list[dict[str, Any]] = []
        self._index: dict[str, int] = {}

    def add(self, geometry: Geometry) -> int:
        boxes = [None if not np.isfinite(v) else round(float(v), 2) for v in geometry.boxes.reshape(-1)]
        entry = {"size": [int(s) for s in geometry.image_size], "boxes": boxes}
        key = json.dumps(entry)
        if key not in self._index:
            self._index[key] = len(self.items)
            self.items.append(entry)
        return self._index[key]


def _stage(stage: StageCapture, geometry: int, pools: Sequence[str], groups: int) -> dict[str, Any]:
    scores = token_image_attention(stage.image_attention).numpy()
    return {
        "text": stage.text,
        "pieces": stage_pieces(stage),
        "eos": bool(stage.ends_with_eos),
        "layers": list(stage.layers),
        "scores": [rounded(float(s)) for s in scores],
        "geometry": geometry,
        "maps": {pool: quantize_rows(token_pool_maps(stage, pool)) for pool in pools},
        "groups": {
            label: {pool: quantize_rows(token_pool_maps(stage, pool, layers=part)) for pool in pools}
            for label, part in layer_groups(stage.layers, groups)
        },
    }


def _figure5_stages(entry: dict[str, Any], names: list[str]) -> dict[str, str]:
    """Stage group → stage name: `initial`, and the adopted round's (else round 1's) feedback/revision."""
    chosen = {"initial": "initial"} if "initial" in names else {}
    round_ = entry.get("adopted_round") or 1
    for kind in ("feedback", "revision"):
        if f"{kind}_{round_}" in names:
            chosen[kind] = f"{kind}_{round_}"
    return chosen


def _figure5(
    collected: list[tuple[dict[str, Any], dict[str, StageCapture]]], pools: Sequence[str]
) -> dict[str, Any] | None:
    """Average normalised maps (96 × 96, image stretched to a square) per stage group and pooling,
    over the instances whose revision was adopted, else over every instance."""
    if not collected:
        return None
    adopted = [item for item in collected if item[0].get("adopted_round")]
    chosen = adopted or collected
    sums: dict[str, dict[str, list[np.ndarray]]] = {}
    for entry, stages in chosen:
        for group, name in _figure5_stages(entry, list(stages)).items():
            stage = stages[name]
            if stage.content_tokens < 1:
                continue
            for pool in pools:
                values = stage_map(stage, pool, TOP_K, "mean", None)
                sums.setdefault(group, {}).setdefault(pool, []).append(
                    normalized_raster(values, stage.geometry)
                )
    if not sums:
        return None
    maps = {
        group: {
            pool: quantize_rows(np.nanmean(np.stack(rasters), axis=0).reshape(1, -1))
            for pool, rasters in by_pool.items()
        }
        for group, by_pool in sums.items()
    }
    return {
        "size": NORMALIZED_SIZE,
        "selection": "adopted" if adopted else "all",
        "n": len(chosen),
        "maps": maps,
    }


def attend_section(run: Path, pools: Sequence[str] = POOLS, layer_groups: int = 0) -> dict[str, Any]:
    """Everything the page shows of the attention run in `run` (see module docstring), with per-token
    maps for each head pooling of `pools` (names of :data:`vistrace.capture.pooling.LAYER_HEAD_POOLS`) over
    all captured layers and, when `layer_groups` ≥ 2, over each of that many runs of layers."""
    if not pools:
        raise ValueError("give at least one head pooling, e.g. top_k_mean")
    data = read_log(run)
    geometries = _Geometries()
    instances: list[dict[str, Any]] = []
    collected: list[tuple[dict[str, Any], dict[str, StageCapture]]] = []
    for entry in data["entries"]:
        if entry.get("skipped") or not entry.get("dir"):
            continue
        directory = run / str(entry["dir"])
        record = read_record(directory)
        if record is None:
            log.warning("%s: unfinished instance, left out of the report", directory)
            continue
        stages = load_stages(directory)
        preview = load_preview(directory)
        collected.append((entry, stages))
        instances.append(
            {
                "index": entry.get("index"),
                "image_id": str(entry.get("image_id", "")),
                "question": str(entry.get("question", "")),
                "gold": entry.get("gold_answer"),
                "adopted_round": entry.get("adopted_round"),
                "image": None if preview is None else image_data_uri(preview),
                "stages": {
                    name: _stage(stage, geometries.add(stage.geometry), pools, layer_groups)
                    for name, stage in stages.items()
                },
            }
        )
    return {
        "kind": "attend",
        "config": data.get("config", {}),
        "pools": list(pools),
        "top_k": TOP_K,
        "geometries": geometries.items,
        "instances": instances,
        "figure5": _figure5(collected, pools),
    }


__all__ = ["POOLS", "TOP_K", "attend_section", "layer_groups", "stage_pieces", "token_pool_maps"]
