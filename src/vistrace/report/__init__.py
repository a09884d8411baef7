"""The static HTML report: one self-contained file that shows attention, knockout and evaluation
runs offline (scripts, styles, images and data inline; nothing is fetched from the network).

    from vistrace.report import write_report
    write_report([Path("runs/attend"), Path("runs/trace")], Path("report.html"))

See docs/report.md for what each view shows.
"""

from __future__ import annotations

import datetime
import json
import logging
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, Literal

from vistrace.runs.attend_io import rank_logs
from vistrace.runs.shard import shard_paths

from .attend import LAYER_GROUPS, POOLS, attend_section
from .encode import MAP_BITS
from .evals import eval_section
from .flow import trace_section
from .page import render_page

log = logging.getLogger(__name__)

RunKind = Literal["attend", "trace", "eval"]
_SECTIONS: dict[str, Callable[[Path], dict[str, Any]]] = {
    "attend": attend_section,
    "trace": trace_section,
    "eval": eval_section,
}
_MARKERS: tuple[tuple[str, RunKind], ...] = (
    ("log.json", "attend"),
    ("results.jsonl", "trace"),
    ("predictions.jsonl", "eval"),
)


def _has_run_file(folder: Path, name: str) -> bool:
    """Whether `folder` holds the run file `name` or, in a sharded run, a rank's share of it."""
    if name == "log.json":
        return (folder / name).is_file() or bool(rank_logs(folder))
    return bool(shard_paths(folder, name))


def detect_kind(run: str | Path) -> RunKind:
    """The kind of the run folder `run`: `attend` (has `log.json`), `trace` (`results.jsonl`) or
    `eval` (`predictions.jsonl`); the `command` of its `config.json` decides when several are there.
    ValueError saying what was expected otherwise."""
    folder = Path(run)
    if not folder.is_dir():
        raise ValueError(f"{folder}: no such run folder")
    found = [kind for name, kind in _MARKERS if _has_run_file(folder, name)]
    config = folder / "config.json"
    if len(found) > 1 and config.is_file():
        command = json.loads(config.read_text(encoding="utf-8")).get("command")
        if command in found:
            return str(command)  # type: ignore[return-value]
    if not found:
        raise ValueError(
            f"{folder}: not a vistrace run folder (expected log.json of `attend`, results.jsonl of "
            "`trace` or predictions.jsonl of `eval`)"
        )
    return found[0]


def write_report(
    runs: Sequence[Path],
    out: Path,
    *,
    title: str = "vistrace report",
    pools: Sequence[str] = POOLS,
    layer_groups: int = LAYER_GROUPS,
    bits: int = MAP_BITS,
) -> Path:
    """Write ONE self-contained HTML file at `out` showing every run folder of `runs`; return `out`.

    Each folder's kind is detected from its files (:func:`detect_kind`): `attend` runs show each
    instance's image and stages with clickable tokens and their heatmaps (per-token maps for the
    `top_k_mean`, `mean` and `max` head poolings over all layers and over `layer_groups` runs of
    consecutive layers, each value quantised to `bits` bits, compressed) and the Figure 5 averages;
    `trace` runs show the flow curves with the paper's filter and clipping as toggles and a sample
    table; `eval` runs show the score per category under the dataset's metric and the mistakes.
    `pools` chooses the head poolings stored for attention runs (fewer make a smaller file);
    `layer_groups` ≥ 2 stores maps over that many runs of consecutive layers (early, middle, late
    by default) for the page's layer control, 0 none (each group costs about as much as the
    all-layer maps); `bits` (1 to 8) sets the precision of a map value (2**bits − 1 levels between 0
    and the token's maximum; fewer bits make a smaller file). `title` heads the page. Raises
    ValueError for a folder that is no run, an unknown pooling or bits out of range; the parent
    folder of `out` is created.
    """
    if not runs:
        raise ValueError("give at least one run folder")
    sections = []
    for run in runs:
        folder = Path(run)
        kind = detect_kind(folder)
        if kind == "attend":
            section = attend_section(folder, pools, layer_groups, bits)
        else:
            section = _SECTIONS[kind](folder)
        sections.append({"name": folder.name or str(folder), "path": str(folder.resolve()), **section})
    data = {
        "title": title,
        "generated": datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d %H:%M UTC"),
        "runs": sections,
    }
    target = Path(out)
    target.parent.mkdir(parents=True, exist_ok=True)
    target.write_text(render_page(title, data), encoding="utf-8")
    log.info("report: %s (%.1f MB)", target, target.stat().st_size / 1e6)
    return target


__all__ = ["LAYER_GROUPS", "MAP_BITS", "POOLS", "RunKind", "detect_kind", "write_report"]
