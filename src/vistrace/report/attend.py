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
import torch

from vistrace.adapters.base import Geometry
from vistrace.capture.generate import StageCapture
from vistrace.capture.pooling import LAYER_HEAD_POOLS, pool_tokens, token_image_attention
from vistrace.plots.attention_maps import NORMALIZED_SIZE, draw_order, normalized_raster, strip_mark
from vistrace.runs.attend_io import load_preview, load_stages, read_log, read_record

from .encode import MAP_BITS, image_data_uri, pack_maps, quantize_rows, rounded, unpack_maps

log = logging.getLogger(__name__)

POOLS: tuple[str, ...] = ("top_k_mean", "mean", "max")
"""Head poolings precomputed for every token (:data:`vistrace.capture.pooling.LAYER_HEAD_POOLS`)."""
TOP_K = 3
LAYER_GROUPS = 3
"""Layer groups stored by default besides all layers: early, middle and late layers."""
IMAGE_SIDE, IMAGE_QUALITY = 420, 85
"""An instance's image is embedded at the size the page draws it (longest side 420 pixels), as a
JPEG of this quality when that is under half the PNG's size (:func:`image_data_uri`)."""


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
        entry = {
            "size": [int(s) for s in geometry.image_size],
            "boxes": boxes,
            "order": [int(i) for i in draw_order(geometry)],
        }
        key = json.dumps(entry)
        if key not in self._index:
            self._index[key] = len(self.items)
            self.items.append(entry)
        return self._index[key]


def map_sets(stage: StageCapture, groups: int) -> list[tuple[str, slice | None]]:
    """The layer sets a stage's maps are stored for: `all` (every captured layer), then the
    :func:`layer_groups` runs of layers."""
    return [("all", None), *layer_groups(stage.layers, groups)]


def _top_k_mean(candidates: torch.Tensor, top_k: int) -> torch.Tensor:
    """:func:`vistrace.capture.pooling.top_k_mean` of (T, K, H, N) per-layer candidates."""
    by_layer = torch.topk(candidates, min(top_k, candidates.shape[1]), dim=1).values.mean(dim=1)
    return torch.topk(by_layer, min(top_k, by_layer.shape[1]), dim=1).values.mean(dim=1)


MapKey = tuple[str, str]
"""(layer set, head pooling) of a map: `("all", "top_k_mean")`, `("0-10", "max")`…"""


def pooled_sets(
    stage: StageCapture, pools: Sequence[str], groups: int, top_k: int = TOP_K
) -> dict[MapKey, torch.Tensor]:
    """The (T, N) maps of `stage` for every layer set of :func:`map_sets` and head pooling of `pools`,
    each :func:`token_pool_maps` of its layers.

    With layer groups and the built-in poolings, the all-layer maps come from the groups' (as
    `vistrace.capture.pooling` defines them: `max` is the maximum of the groups' maxima, `mean` their
    mean weighted by size, `top_k_mean` starts from the union of each group's k largest values per
    head and feature, which holds the k largest of all), so each layer is read once per pooling.
    """
    attention = stage.image_attention.float()
    sets = map_sets(stage, groups)
    parts = [(label, part) for label, part in sets[1:] if part is not None]
    if not parts or any(pool not in ("top_k_mean", "mean", "max") for pool in pools):
        return {
            (label, pool): pool_tokens(attention if part is None else attention[:, part], pool, top_k)
            for label, part in sets
            for pool in pools
        }
    layers = attention.shape[1]
    maps: dict[MapKey, torch.Tensor] = {}
    for pool in pools:
        if pool == "top_k_mean":
            candidates = [
                torch.topk(attention[:, part], min(top_k, part.stop - part.start), dim=1).values
                for _, part in parts
            ]
            maps["all", pool] = _top_k_mean(torch.cat(candidates, dim=1), top_k)
            maps.update(
                {
                    (label, pool): _top_k_mean(c, top_k)
                    for (label, _), c in zip(parts, candidates, strict=True)
                }
            )
        elif pool == "mean":
            maps.update({(label, pool): attention[:, part].mean(dim=(1, 2)) for label, part in parts})
            weighted = [maps[label, pool] * ((part.stop - part.start) / layers) for label, part in parts]
            maps["all", pool] = torch.stack(weighted).sum(dim=0)
        else:
            maps.update({(label, pool): attention[:, part].amax(dim=(1, 2)) for label, part in parts})
            maps["all", pool] = torch.stack([maps[label, pool] for label, _ in parts]).amax(dim=0)
    return {(label, pool): maps[label, pool] for label, _ in sets for pool in pools}


def stored_sets(labels: Sequence[str], pools: Sequence[str]) -> list[MapKey]:
    """The maps stored for a stage with the layer sets `labels` (`all` first): all of them but, when
    there are layer groups, the all-layer `max`: the page takes it as the maximum of the groups'
    `max` maps, which is the same map within the same half step (`vistrace.capture.pooling.max_pool`
    over all layers is the maximum of its values over each group's; a group's row maximum is at
    most the all-layer row's, so its step is no larger)."""
    derived = len(labels) > 1
    return [
        (label, pool)
        for label in labels
        for pool in pools
        if not (derived and label == "all" and pool == "max")
    ]


def stage_maps(packed: dict[str, Any]) -> dict[MapKey, tuple[np.ndarray, np.ndarray]]:
    """Every map of a stage's `maps` entry as the page decodes it, by (layer set, pooling): its (T, N)
    values and (T,) row scales (a value is within `scale / (2 (2**bits - 1))` of the pooling's);
    the all-layer `max` when it is not stored (:func:`stored_sets`) from the groups' `max` maps,
    its scales the largest of theirs."""
    values, scales = unpack_maps(packed)
    maps = {
        (str(label), str(pool)): (values[i], scales[i]) for i, (label, pool) in enumerate(packed["stored"])
    }
    groups = [(label, pool) for label, pool in maps if label != "all" and pool == "max"]
    if ("all", "max") not in maps and groups:
        maps["all", "max"] = (
            np.max([maps[key][0] for key in groups], axis=0),
            np.max([maps[key][1] for key in groups], axis=0),
        )
    return maps


def _stage(
    stage: StageCapture, geometry: int, pools: Sequence[str], groups: int, bits: int
) -> tuple[dict[str, Any], list[torch.Tensor]]:
    """The page's data of a stage, and its all-layer maps (one per pooling)."""
    scores = token_image_attention(stage.image_attention).numpy()
    maps = pooled_sets(stage, pools, groups)
    labels = [label for label, _ in map_sets(stage, groups)]
    stored = stored_sets(labels, pools)
    data = {
        "text": stage.text,
        "pieces": stage_pieces(stage),
        "eos": bool(stage.ends_with_eos),
        "layers": list(stage.layers),
        "scores": [rounded(float(s)) for s in scores],
        "geometry": geometry,
        # The layer sets (for the layer menu) and the (layer set, pooling) of every packed map.
        "maps": {
            "groups": labels,
            "stored": [list(key) for key in stored],
            **pack_maps([maps[key].numpy() for key in stored], bits),
        },
    }
    return data, [maps["all", pool] for pool in pools]


def _figure5_stages(entry: dict[str, Any], names: list[str]) -> dict[str, str]:
    """Stage group → stage name: `initial`, and the adopted round's (else round 1's) feedback/revision."""
    chosen = {"initial": "initial"} if "initial" in names else {}
    round_ = entry.get("adopted_round") or 1
    for kind in ("feedback", "revision"):
        if f"{kind}_{round_}" in names:
            chosen[kind] = f"{kind}_{round_}"
    return chosen


Averages = dict[str, tuple[Geometry, dict[str, np.ndarray]]]
"""Per stage with content tokens: its geometry and, per pooling, its all-layer map averaged over
the tokens without a final EOS (`vistrace.plots.attention_maps.stage_map` with `tokens="mean"`)."""


def _averages(
    stage: StageCapture, pools: Sequence[str], all_layers: list[torch.Tensor]
) -> dict[str, np.ndarray]:
    content = stage.content_tokens
    return {pool: maps[:content].mean(dim=0).numpy() for pool, maps in zip(pools, all_layers, strict=True)}


def _figure5(
    collected: list[tuple[dict[str, Any], list[str], Averages]], pools: Sequence[str]
) -> dict[str, Any] | None:
    """Average normalised maps (96 × 96, image stretched to a square) per stage group and pooling,
    over the instances whose revision was adopted, else over every instance."""
    if not collected:
        return None
    adopted = [item for item in collected if item[0].get("adopted_round")]
    chosen = adopted or collected
    sums: dict[str, dict[str, list[np.ndarray]]] = {}
    for entry, names, averages in chosen:
        for group, name in _figure5_stages(entry, names).items():
            if name not in averages:  # no content token
                continue
            geometry, by_pool = averages[name]
            for pool in pools:
                sums.setdefault(group, {}).setdefault(pool, []).append(
                    normalized_raster(by_pool[pool], geometry)
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


def attend_section(
    run: Path,
    pools: Sequence[str] = POOLS,
    layer_groups: int = LAYER_GROUPS,
    bits: int = MAP_BITS,
) -> dict[str, Any]:
    """Everything the page shows of the attention run in `run` (see module docstring), with per-token
    maps for each head pooling of `pools` (names of :data:`vistrace.capture.pooling.LAYER_HEAD_POOLS`) over
    all captured layers and, when `layer_groups` ≥ 2, over each of that many runs of layers, each
    value quantised to `bits` bits (:func:`vistrace.report.encode.pack_maps`)."""
    if not pools:
        raise ValueError("give at least one head pooling, e.g. top_k_mean")
    for pool in pools:
        if pool not in LAYER_HEAD_POOLS:
            raise ValueError(f"unknown pooling method {pool!r}; choose one of: {', '.join(LAYER_HEAD_POOLS)}")
    if not 1 <= bits <= 8:
        raise ValueError(f"bits must be 1 to 8, got {bits}")
    data = read_log(run)
    geometries = _Geometries()
    instances: list[dict[str, Any]] = []
    collected: list[tuple[dict[str, Any], list[str], Averages]] = []
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
        pages: dict[str, dict[str, Any]] = {}
        averages: Averages = {}
        for name, stage in stages.items():
            pages[name], all_layers = _stage(stage, geometries.add(stage.geometry), pools, layer_groups, bits)
            if stage.content_tokens >= 1:
                averages[name] = (stage.geometry, _averages(stage, pools, all_layers))
        collected.append((entry, list(stages), averages))
        instances.append(
            {
                "index": entry.get("index"),
                "image_id": str(entry.get("image_id", "")),
                "question": str(entry.get("question", "")),
                "gold": entry.get("gold_answer"),
                "adopted_round": entry.get("adopted_round"),
                "image": None if preview is None else image_data_uri(preview, IMAGE_SIDE, IMAGE_QUALITY),
                "stages": pages,
            }
        )
    return {
        "kind": "attend",
        "config": data.get("config", {}),
        "pools": list(pools),
        "top_k": TOP_K,
        "bits": bits,
        "geometries": geometries.items,
        "instances": instances,
        "figure5": _figure5(collected, pools),
    }


__all__ = [
    "LAYER_GROUPS",
    "POOLS",
    "TOP_K",
    "MapKey",
    "attend_section",
    "layer_groups",
    "map_sets",
    "pooled_sets",
    "stage_maps",
    "stage_pieces",
    "stored_sets",
    "token_pool_maps",
]
