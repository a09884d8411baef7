"""Encoding helpers of the HTML report: quantised maps, image data URIs, JSON safe inside a page."""

from __future__ import annotations

import base64
import io
import json
import math
from typing import Any

import numpy as np
from PIL import Image

IMAGE_MAX_SIDE = 512
"""Longest side, in pixels, of an image embedded in the report."""


def quantize_rows(values: np.ndarray) -> dict[str, Any]:
    """(R, N) non-negative floats → `{"rows", "cols", "scale", "data"}`, one uint8 row per input row.

    Row `r` is stored as `round(v / scale[r] * 255)` with `scale[r]` its maximum (1 for an all-zero
    row), base64-encoded row-major; :func:`dequantize_rows` inverts it within `scale[r] / 510`.
    """
    array = np.nan_to_num(np.asarray(values, dtype=np.float64), nan=0.0).clip(min=0.0)
    if array.ndim != 2:
        raise ValueError(f"expected a (rows, columns) array, got shape {array.shape}")
    scale = array.max(axis=1, initial=0.0)
    scale[scale <= 0] = 1.0
    codes = np.rint(array / scale[:, None] * 255.0).clip(0, 255).astype(np.uint8)
    return {
        "rows": int(array.shape[0]),
        "cols": int(array.shape[1]),
        "scale": [float(f"{s:.6g}") for s in scale],
        "data": base64.b64encode(codes.tobytes()).decode("ascii"),
    }


def dequantize_rows(packed: dict[str, Any]) -> np.ndarray:
    """The (R, N) float array of a :func:`quantize_rows` result (as the page decodes it)."""
    codes = np.frombuffer(base64.b64decode(packed["data"]), dtype=np.uint8)
    codes = codes.reshape(int(packed["rows"]), int(packed["cols"])).astype(np.float64)
    return codes / 255.0 * np.asarray(packed["scale"], dtype=np.float64)[:, None]


def image_data_uri(image: Image.Image, max_side: int = IMAGE_MAX_SIDE) -> str:
    """A `data:image/png;base64,…` URI of `image`, its longest side at most `max_side` pixels; a
    JPEG (quality 88) instead when that is under half the PNG's size, as it is for photographs."""
    preview = image.convert("RGB")
    preview.thumbnail((max_side, max_side))
    png, jpeg = io.BytesIO(), io.BytesIO()
    preview.save(png, format="PNG", optimize=True)
    preview.save(jpeg, format="JPEG", quality=88)
    kind, data = ("jpeg", jpeg) if 2 * jpeg.tell() < png.tell() else ("png", png)
    return f"data:image/{kind};base64," + base64.b64encode(data.getvalue()).decode("ascii")


def rounded(value: float, digits: int = 5) -> float | None:
    """`value` to `digits` significant digits; None for NaN or infinity (JSON has neither)."""
    if not math.isfinite(value):
        return None
    return float(f"{value:.{digits}g}")


def script_json(data: Any) -> str:
    """`data` as JSON that is safe as the text of a `<script type="application/json">` element.

    `<`, `>` and `&` become `\\u003c`, `\\u003e`, `\\u0026` (so `</script>` and `<!--` cannot end or
    change the element) and every non-ASCII character is escaped, U+2028 and U+2029 included.
    """
    text = json.dumps(data, ensure_ascii=True, separators=(",", ":"), allow_nan=False)
    return text.replace("<", "\\u003c").replace(">", "\\u003e").replace("&", "\\u0026")


__all__ = ["IMAGE_MAX_SIDE", "dequantize_rows", "image_data_uri", "quantize_rows", "rounded", "script_json"]
