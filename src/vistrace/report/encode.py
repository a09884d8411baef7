"""Encoding helpers of the HTML report: quantised maps, image data URIs, JSON safe inside a page."""

from __future__ import annotations

import base64
import io
import json
import math
import zlib
from collections.abc import Sequence
from typing import Any

import numpy as np
from PIL import Image

IMAGE_MAX_SIDE = 512
"""Longest side, in pixels, of an image embedded in the report."""
MAP_BITS = 4
"""Bits per value of the per-token maps: 2**bits - 1 levels between 0 and each row's maximum."""


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


def pack_maps(maps: Sequence[np.ndarray], bits: int = MAP_BITS) -> dict[str, Any]:
    """S maps of shape (T, N) (non-negative) → `{"rows": T, "cols": N, "sets": S, "bits", "data"}`.

    Every row of every map is quantised to `bits` bits with its own scale, its maximum as a float32
    (1 for an all-zero row): `code = round(v / scale * L)`, `L = 2**bits - 1`, so that
    `code / L * scale` is within `scale / (2 L)` of `v`. `data` is the base64 of the zlib stream
    (what the browser's `DecompressionStream("deflate")` reads) of: the S × T scales (float32,
    little-endian, map by map), then per map its bit planes, most significant first, each the bits
    of the codes feature by feature (the T tokens of feature 0, then of feature 1, …) packed eight
    to a byte, first bit highest. Planes of consecutive tokens of one feature are long runs of equal
    bits, which deflate stores in a fraction of a bit per value. :func:`unpack_maps` inverts it.
    """
    if not 1 <= bits <= 8:
        raise ValueError(f"bits must be 1 to 8, got {bits}")
    arrays = [np.nan_to_num(np.asarray(m, dtype=np.float64), nan=0.0).clip(min=0.0) for m in maps]
    if not arrays:
        raise ValueError("give at least one map")
    shape = arrays[0].shape
    if len(shape) != 2 or any(a.shape != shape for a in arrays):
        raise ValueError(f"expected maps of one (rows, columns) shape, got {[a.shape for a in arrays]}")
    levels = (1 << bits) - 1
    scales: list[bytes] = []
    planes: list[bytes] = []
    for array in arrays:
        scale = array.max(axis=1, initial=0.0).astype(np.float32)
        scale[scale <= 0] = 1.0
        codes = np.rint(array / scale.astype(np.float64)[:, None] * levels).clip(0, levels).astype(np.uint8)
        by_feature = codes.T.reshape(-1)
        planes.extend(np.packbits((by_feature >> p) & 1).tobytes() for p in reversed(range(bits)))
        scales.append(scale.astype("<f4").tobytes())
    payload = b"".join(scales) + b"".join(planes)
    return {
        "rows": int(shape[0]),
        "cols": int(shape[1]),
        "sets": len(arrays),
        "bits": bits,
        "data": base64.b64encode(zlib.compress(payload, 9)).decode("ascii"),
    }


def unpack_maps(packed: dict[str, Any]) -> tuple[np.ndarray, np.ndarray]:
    """The (S, T, N) values and (S, T) scales of a :func:`pack_maps` result, decoded as the page does."""
    rows, cols, sets, bits = (int(packed[k]) for k in ("rows", "cols", "sets", "bits"))
    payload = zlib.decompress(base64.b64decode(packed["data"]))
    scales = np.frombuffer(payload, dtype="<f4", count=sets * rows).reshape(sets, rows).astype(np.float64)
    plane = -(-rows * cols // 8)
    offset = 4 * sets * rows
    values = np.empty((sets, rows, cols))
    for s in range(sets):
        codes = np.zeros(rows * cols, dtype=np.int64)
        for p in reversed(range(bits)):
            chunk = np.frombuffer(payload, dtype=np.uint8, count=plane, offset=offset)
            codes |= np.unpackbits(chunk)[: rows * cols].astype(np.int64) << p
            offset += plane
        values[s] = codes.reshape(cols, rows).T / ((1 << bits) - 1) * scales[s][:, None]
    if offset != len(payload):
        raise ValueError(f"packed maps: {len(payload)} bytes, expected {offset}")
    return values, scales


def image_data_uri(image: Image.Image, max_side: int = IMAGE_MAX_SIDE, quality: int = 88) -> str:
    """A `data:image/png;base64,…` URI of `image`, its longest side at most `max_side` pixels; a
    JPEG (of `quality`) instead when that is under half the PNG's size, as it is for photographs."""
    preview = image.convert("RGB")
    preview.thumbnail((max_side, max_side))
    png, jpeg = io.BytesIO(), io.BytesIO()
    preview.save(png, format="PNG", optimize=True)
    preview.save(jpeg, format="JPEG", quality=quality)
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


__all__ = [
    "IMAGE_MAX_SIDE",
    "MAP_BITS",
    "dequantize_rows",
    "image_data_uri",
    "pack_maps",
    "quantize_rows",
    "rounded",
    "script_json",
    "unpack_maps",
]
