"""Scenes of the synthetic shapes world and their pixels.

An image is a plain (optionally lightly noisy) pale background split into a 2x2 grid of cells named
``"top left"``, ``"top right"``, ``"bottom left"`` and ``"bottom right"``. Each of 1-3 shapes sits
entirely inside its own cell, so shapes never overlap and each has exactly one position name.

Boxes are ``(left, top, right, bottom)`` in pixels, origin at the image's top-left corner, with
``right`` and ``bottom`` exclusive (the convention of ``PIL.Image.crop``).

Every function takes its randomness from an explicit ``numpy.random.Generator`` or seed; nothing
reads or changes global random state.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass

import numpy as np
from PIL import Image, ImageDraw

Box = tuple[int, int, int, int]
RGB = tuple[int, int, int]

KINDS: tuple[str, ...] = ("circle", "square", "triangle", "cross")
COLOURS: dict[str, RGB] = {
    "red": (220, 30, 30),
    "green": (30, 160, 50),
    "blue": (30, 70, 220),
    "yellow": (240, 200, 20),
}
POSITIONS: tuple[str, ...] = ("top left", "top right", "bottom left", "bottom right")
MAX_SHAPES = 3
NOISE_AMPLITUDE = 6
MIN_IMAGE_SIDE = 16


@dataclass(frozen=True)
class Shape:
    """One filled shape: ``kind`` in `KINDS`, ``colour`` in `COLOURS`, tight pixel ``box``."""

    kind: str
    colour: str
    box: Box


@dataclass(frozen=True)
class Scene:
    """An image description that `render` turns into pixels.

    ``width``/``height`` are in pixels; ``background`` is an RGB triple (0-255); ``noise_seed``,
    when set, adds grey noise of ±`NOISE_AMPLITUDE` levels drawn from that seed.
    """

    id: int
    width: int
    height: int
    background: RGB
    shapes: tuple[Shape, ...]
    noise_seed: int | None = None

    def position_of(self, shape: Shape) -> str:
        """The name in `POSITIONS` of the grid cell holding the centre of ``shape``'s box."""
        left, top, right, bottom = shape.box
        column = int(left + right >= self.width)
        row = int(top + bottom >= self.height)
        return POSITIONS[2 * row + column]


def _has_unique(values: list[str]) -> bool:
    return 1 in Counter(values).values()


def _place(rng: np.random.Generator, cell: int, width: int, height: int) -> Box:
    row, column = divmod(cell, 2)
    cell_left, cell_right = (0, width // 2) if column == 0 else (width // 2, width)
    cell_top, cell_bottom = (0, height // 2) if row == 0 else (height // 2, height)
    cell_width, cell_height = cell_right - cell_left, cell_bottom - cell_top
    margin = max(1, min(cell_width, cell_height) // 16)
    largest = min(cell_width, cell_height) - 2 * margin
    size = int(rng.integers((largest * 11 + 19) // 20, largest + 1))
    left = cell_left + margin + int(rng.integers(cell_width - 2 * margin - size + 1))
    top = cell_top + margin + int(rng.integers(cell_height - 2 * margin - size + 1))
    return left, top, left + size, top + size


def generate_scene(rng: np.random.Generator, scene_id: int, width: int = 64, height: int = 64) -> Scene:
    """A random scene of ``width`` x ``height`` pixels with 1-`MAX_SHAPES` shapes.

    At least one shape has a kind and at least one a colour that no other shape shares, so every
    question kind can be asked about every scene.
    """
    if width < MIN_IMAGE_SIDE or height < MIN_IMAGE_SIDE:
        raise ValueError(f"image must be at least {MIN_IMAGE_SIDE}x{MIN_IMAGE_SIDE} px, got {width}x{height}")
    while True:
        n_shapes = int(rng.integers(1, MAX_SHAPES + 1))
        kinds = [KINDS[i] for i in rng.integers(len(KINDS), size=n_shapes)]
        colours = [list(COLOURS)[i] for i in rng.integers(len(COLOURS), size=n_shapes)]
        if _has_unique(kinds) and _has_unique(colours):
            break
    cells = sorted(int(cell) for cell in rng.permutation(len(POSITIONS))[:n_shapes])
    shapes = tuple(
        Shape(kind, colour, _place(rng, cell, width, height))
        for kind, colour, cell in zip(kinds, colours, cells, strict=True)
    )
    grey = int(rng.integers(205, 241))
    tint = rng.integers(-6, 7, size=3)
    background: RGB = (grey + int(tint[0]), grey + int(tint[1]), grey + int(tint[2]))
    noise_seed = int(rng.integers(2**31)) if rng.random() < 0.5 else None
    return Scene(scene_id, width, height, background, shapes, noise_seed)


def _draw_shape(draw: ImageDraw.ImageDraw, shape: Shape) -> None:
    left, top, right, bottom = shape.box
    last_x, last_y = right - 1, bottom - 1
    fill = COLOURS[shape.colour]
    if shape.kind == "circle":
        draw.ellipse((left, top, last_x, last_y), fill=fill)
    elif shape.kind == "square":
        draw.rectangle((left, top, last_x, last_y), fill=fill)
    elif shape.kind == "triangle":
        draw.polygon([((left + last_x) / 2, top), (left, last_y), (last_x, last_y)], fill=fill)
    elif shape.kind == "cross":
        arm = max(2, (right - left) // 3)
        offset_x = (right - left - arm) // 2
        offset_y = (bottom - top - arm) // 2
        draw.rectangle((left, top + offset_y, last_x, top + offset_y + arm - 1), fill=fill)
        draw.rectangle((left + offset_x, top, left + offset_x + arm - 1, last_y), fill=fill)
    else:
        raise ValueError(f"unknown shape kind {shape.kind!r}; known: {', '.join(KINDS)}")


def render(scene: Scene) -> Image.Image:
    """The RGB image of ``scene``, ``scene.width`` x ``scene.height`` pixels; deterministic."""
    pixels = np.empty((scene.height, scene.width, 3), dtype=np.int16)
    pixels[...] = scene.background
    if scene.noise_seed is not None:
        noise_rng = np.random.default_rng(scene.noise_seed)
        pixels += noise_rng.integers(
            -NOISE_AMPLITUDE, NOISE_AMPLITUDE + 1, size=(scene.height, scene.width, 1)
        )
    image = Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8))
    draw = ImageDraw.Draw(image)
    for shape in scene.shapes:
        _draw_shape(draw, shape)
    return image
