"""Writing a figure and its numbers: PNG and PDF side by side, JSON, CSV."""

from __future__ import annotations

import csv
import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import matplotlib.pyplot as plt


def save_figure(fig: Any, out_dir: Path, stem: str) -> list[Path]:
    """Save `fig` as `<stem>.png` and `<stem>.pdf` in `out_dir` (created), close it; returns both paths."""
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = [out_dir / f"{stem}.png", out_dir / f"{stem}.pdf"]
    for path in paths:
        fig.savefig(path, bbox_inches="tight", dpi=150)
    plt.close(fig)
    return paths


def write_json(path: Path, data: Any) -> Path:
    """Write `data` as indented UTF-8 JSON to `path`; returns `path`."""
    path.write_text(json.dumps(data, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
    return path


def write_csv(path: Path, header: Sequence[str], rows: Sequence[Sequence[Any]]) -> Path:
    """Write `header` and `rows` as UTF-8 CSV to `path`; returns `path`."""
    with path.open("w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle)
        writer.writerow(header)
        writer.writerows(rows)
    return path


__all__ = ["save_figure", "write_csv", "write_json"]
