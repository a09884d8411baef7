"""The data of a knockout (`trace`) run for the report: every result's per-layer probabilities, so
the page can draw the flow curves with the paper's filter and clipping switched on or off, and the
samples (question and answer text from the run's data file when it is still there)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from vistrace.images import ImageError, open_image, resolve_image
from vistrace.runs.export import read_results
from vistrace.runs.folder import CONFIG_FILE

from .encode import image_data_uri, rounded

MIN_P_FULL = 0.5
"""The paper's filter: samples whose unblocked answer probability is below it are left out."""
MAX_IMAGES = 100
"""The first this many samples carry their image (when the data file and the image are there)."""
IMAGE_SIDE = 256


def _read_config(run: Path) -> dict[str, Any]:
    path = run / CONFIG_FILE
    if not path.is_file():
        return {}
    data = json.loads(path.read_text(encoding="utf-8"))
    return data if isinstance(data, dict) else {}


def _data_samples(config: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """The run's input samples by id (`id`, else `line<n>`, as the trace names them); empty when the
    data file is gone."""
    path = Path(str(config.get("data") or ""))
    if not config.get("data") or not path.is_file():
        return {}
    samples: dict[str, dict[str, Any]] = {}
    with path.open(encoding="utf-8-sig", errors="replace") as handle:
        for number, line in enumerate(handle, start=1):
            try:
                record = json.loads(line)
            except json.JSONDecodeError:
                continue
            if isinstance(record, dict):
                key = str(record["id"]) if record.get("id") is not None else f"line{number}"
                samples.setdefault(key, record)
    return samples


def _image(source: dict[str, Any], config: dict[str, Any]) -> str | None:
    """The sample's image as a data URI, resolved as the trace resolved it; None when it is gone."""
    if not isinstance(source.get("image"), str) or not config.get("data"):
        return None
    try:
        path = resolve_image(source["image"], str(config["data"]), config.get("images"))
        return image_data_uri(open_image(path), IMAGE_SIDE)
    except (ImageError, OSError, ValueError):
        return None


def _text(value: Any) -> str | None:
    return None if value is None else str(value)


def trace_section(run: Path) -> dict[str, Any]:
    """Everything the page shows of the knockout run in `run` (see module docstring)."""
    config = _read_config(run)
    inputs = _data_samples(config)
    results: list[dict[str, Any]] = []
    samples: dict[str, dict[str, Any]] = {}
    for record in read_results(run):
        sample_id = str(record["id"])
        categories = record.get("categories") or [record.get("category") or "all"]
        results.append(
            {
                "id": sample_id,
                "pathway": str(record["pathway"]),
                "k": record.get("k"),
                "mode": _text(record.get("mode")),
                "dataset": _text(record.get("dataset")) or "data",
                "categories": [str(c) for c in dict.fromkeys(categories)],
                "p_full": rounded(float(record["p_full"])),
                "probs": [rounded(float(p)) for p in record["probs"]],
                "cross": [int(layer) for layer in record.get("cross_layers") or []],
            }
        )
        if sample_id not in samples:
            source = inputs.get(sample_id, {})
            samples[sample_id] = {
                "id": sample_id,
                "question": _text(source.get("prompt") or source.get("question")),
                "answer": _text(source.get("answer")),
                "p_full": rounded(float(record["p_full"])),
                "category": ", ".join(str(c) for c in categories),
                "image": _image(source, config) if len(samples) < MAX_IMAGES else None,
            }
    return {
        "kind": "trace",
        "config": config,
        "min_p_full": MIN_P_FULL,
        "results": results,
        "samples": list(samples.values()),
    }


__all__ = ["MAX_IMAGES", "MIN_P_FULL", "trace_section"]
