"""Images as every command reads them: where a relative path points, how a file is decoded and how
transparency is flattened.

Three rules, one place:

- **Paths.** A relative image path in a data file (a dataset file, a trace JSONL, an attend input)
  is resolved against ``images_dir`` when one is given (``--images``), else against the folder of
  the data file itself; absolute paths are used as they are. The current directory never matters.
- **Decoding** (:func:`open_image`, as transformers' ``load_image`` decodes): the EXIF orientation
  is applied, so a photo taken sideways is seen upright; 16-bit grey images (PNG mode ``I;16``/``I``)
  are scaled to 8 bits instead of saturating to white; an image larger than PIL's decompression-bomb
  limit, a missing, empty or corrupt file is an :class:`ImageError` naming the file.
- **Transparency.** An image with an alpha channel (RGBA, LA, PA …) or a palette / grey image with a
  transparent colour is composited onto an opaque :data:`BACKGROUND` (white) before anything else
  sees it, as the HF image processors' ``convert_rgb`` does; a bare ``convert("RGB")`` would drop the
  alpha channel and keep whatever colour the transparent pixels happen to hold (often black).
"""

from __future__ import annotations

import warnings
from pathlib import Path

from PIL import Image, ImageOps, UnidentifiedImageError

__all__ = ["BACKGROUND", "ImageError", "image_base", "open_image", "resolve_image", "to_rgb"]


class ImageError(ValueError):
    """An image cannot be read; the message names the file and says why."""


BACKGROUND: tuple[int, int, int] = (255, 255, 255)
"""The colour transparent pixels are composited onto (RGB, 0..255): white, as in transformers'
``image_transforms.convert_to_rgb``."""


def image_base(data_file: str | Path, images_dir: str | Path | None = None) -> Path:
    """The folder relative image paths of ``data_file`` are resolved against.

    ``images_dir`` when given, else the data file's folder (for a directory — an HF dataset saved to
    disk — the directory itself). Both are made absolute.
    """
    if images_dir is not None:
        return Path(images_dir).expanduser().resolve()
    data = Path(data_file).expanduser().resolve()
    return data if data.is_dir() else data.parent


def resolve_image(value: str | Path, data_file: str | Path, images_dir: str | Path | None = None) -> Path:
    """The absolute path of an image named ``value`` in ``data_file`` (see :func:`image_base`)."""
    path = Path(value).expanduser()
    return path if path.is_absolute() else image_base(data_file, images_dir) / path


def _has_transparency(image: Image.Image) -> bool:
    """Whether the image carries alpha or a transparent palette / grey value."""
    return any(band in ("A", "a") for band in image.getbands()) or "transparency" in image.info


def to_rgb(image: Image.Image, background: tuple[int, int, int] = BACKGROUND) -> Image.Image:
    """The image as 8-bit RGB, transparent pixels composited onto ``background``.

    An RGB image is returned as is. A fully transparent pixel becomes ``background``; a pixel of
    alpha ``a`` (0..255) becomes ``round((a·colour + (255 − a)·background) / 255)`` per channel (PIL's
    ``alpha_composite``). Images without transparency are converted with ``convert("RGB")``.
    """
    if image.mode == "RGB":
        return image
    if not _has_transparency(image):
        return image.convert("RGB")
    rgba = image.convert("RGBA")
    canvas = Image.new("RGBA", rgba.size, (*background, 255))
    return Image.alpha_composite(canvas, rgba).convert("RGB")


def _to_8bit(image: Image.Image) -> Image.Image:
    """A 16-bit or 32-bit integer grey image as 8-bit grey, scaled by 1/256 (``I;16``: 0 … 65535)."""
    if image.mode in ("I;16", "I;16B", "I;16L", "I;16N", "I"):
        import numpy as np

        values = np.asarray(image, dtype=np.float64)
        top = 65535.0 if image.mode.startswith("I;16") or values.max(initial=0) > 255 else 255.0
        scaled = np.clip(np.round(values / top * 255.0), 0, 255).astype(np.uint8)
        return Image.fromarray(scaled, mode="L")
    if image.mode == "F":
        import numpy as np

        values = np.asarray(image, dtype=np.float64)
        scaled = np.clip(np.round(values * (255.0 if values.max(initial=0) <= 1 else 1.0)), 0, 255)
        return Image.fromarray(scaled.astype(np.uint8), mode="L")
    return image


def decode(image: Image.Image) -> Image.Image:
    """An opened image as 8-bit RGB: EXIF orientation applied, 16-bit grey scaled, transparency
    flattened (:func:`to_rgb`)."""
    image.load()
    upright = ImageOps.exif_transpose(image) or image
    return to_rgb(_to_8bit(upright))


def open_image(path: str | Path) -> Image.Image:
    """The image file at ``path`` decoded as :func:`decode` does; :class:`ImageError` when it cannot be."""
    file = Path(path)
    if not file.is_file():
        raise ImageError(f"image not found: {file}")
    if file.stat().st_size == 0:
        raise ImageError(f"image unreadable: {file} (the file is empty)")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(file) as image:
                return decode(image)
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as error:
        raise ImageError(f"image too large: {file} ({error})") from None
    except (UnidentifiedImageError, OSError, ValueError, SyntaxError) as error:
        reason = " ".join(str(error).split()) or type(error).__name__
        raise ImageError(f"image unreadable: {file} ({reason})") from None
