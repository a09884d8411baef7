"""The data of an evaluation (`eval`) run for the report: the score per category under the
dataset's metric (:func:`vistrace.runs.scoring.score_record`) and the predictions that missed."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from PIL import Image

from vistrace.runs.predictions import load_predictions
from vistrace.runs.scoring import metric_name, record_categories, score_record

from .encode import image_data_uri, rounded

MAX_MISTAKES = 500
"""At most this many mistakes are listed (the lowest scores first)."""
MAX_THUMBNAILS = 100
"""The first this many mistakes listed carry a thumbnail of their image (when the file is there)."""
THUMBNAIL_SIDE = 160


def _thumbnail(path: Any) -> str | None:
    """A small PNG data URI of the image at `path`, or None when there is no readable image there."""
    if not path or not Path(str(path)).is_file():
        return None
    try:
        with Image.open(str(path)) as image:
            return image_data_uri(image, THUMBNAIL_SIDE)
    except (OSError, ValueError):
        return None


def eval_section(run: Path) -> dict[str, Any]:
    """Scores per category (`overall` first) and the mistakes (score below 1) of the run in `run`.

    Scores are computed with the default rules of :func:`vistrace.runs.scoring.score_run`; nothing is
    written into the run folder."""
    records, config = load_predictions(run)
    datasets = sorted({str(r.get("dataset", "")) for r in records})
    dataset = str(config.get("dataset") or (datasets[0] if datasets else ""))
    per_category: dict[str, list[float]] = {}
    every: list[float] = []
    mistakes: list[dict[str, Any]] = []
    for record in records:
        score = score_record(record)
        if score is None:
            continue
        every.append(score)
        for name in record_categories(record):
            per_category.setdefault(name, []).append(score)
        if score < 1.0:
            mistakes.append(
                {
                    "id": str(record["id"]),
                    "question": str(record.get("question", "")),
                    "prediction": str(record.get("prediction", "")),
                    "answers": [str(a) for a in record.get("answers") or ()],
                    "category": ", ".join(record_categories(record)),
                    "score": rounded(score, 3),
                    "image_path": record.get("image"),
                }
            )
    mistakes.sort(key=lambda m: (m["score"], m["id"]))
    mistakes = mistakes[:MAX_MISTAKES]
    for mistake in mistakes[:MAX_THUMBNAILS]:
        mistake["image"] = _thumbnail(mistake.pop("image_path"))
    for mistake in mistakes[MAX_THUMBNAILS:]:
        mistake.pop("image_path")
    rows = [("overall", every), *sorted(per_category.items())]
    return {
        "kind": "eval",
        "config": config,
        "dataset": dataset,
        "metric": metric_name(dataset),
        "scores": [
            {"category": name, "count": len(v), "score": rounded(sum(v) / len(v), 4) if v else None}
            for name, v in rows
        ],
        "mistakes": mistakes,
        "n_mistakes": len(mistakes),
    }


__all__ = ["MAX_MISTAKES", "MAX_THUMBNAILS", "eval_section"]
