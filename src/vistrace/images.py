"""Images as every command reads them: where a relative path points, and how transparency is flattened.

Two rules, one place:

- **Paths.** A relative image path in a data file (a dataset file, a trace JSONL, an attend input)
  is resolved against ``images_dir`` when one is given (``--images``), else against the folder of
  the data file itself; absolute paths are used as they are. The current directory never matters.
- **Transparency.** An image with an alpha channel (RGBA, LA, PA …) or a palette / grey image with a
  transparent colour is composited onto an opaque :data:`BACKGROUND` (white) before anything else
  sees it, as the HF image processors' ``convert_rgb`` does; a bare ``convert("RGB")`` would drop the
  alpha channel and keep whatever colour the transparent pixels happen to hold (often black).
"""

from __future__ import annotations

from pathlib import Path

from PIL import Image

__all__ = ["BACKGROUND", "image_base", "resolve_image", "to_rgb"]

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
