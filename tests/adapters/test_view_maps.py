"""Maps of families that see an image as several views (tiles plus a global image or thumbnail, crops
plus the whole image): over the image the finest view is drawn, on the bare grid every view, the
tiles as on the model's canvas and the whole-image view beside them."""

from __future__ import annotations

import numpy as np
import pytest

from vistrace.adapters.gemma3 import Gemma3Adapter
from vistrace.adapters.idefics3 import frame_geometry
from vistrace.models.loading import LoadedModel
from vistrace.plots.attention_maps import draw_order, feature_raster, grid_canvas, layout_key

pytestmark = [pytest.mark.unit]

SIZE = (320, 200)


def _one_hot(n: int, index: int) -> np.ndarray:
    values = np.zeros(n)
    values[index] = 1.0
    return values


def test_squares_are_drawn_over_the_global_image() -> None:
    # Idefics3 / SmolVLM: 2 × 2 squares of 3 × 3 features, then the global image (features 36 … 44).
    geometry = frame_geometry(2, 2, 42, 7, 2, SIZE)
    square_feature = 9 + 4  # the top-right square's centre: x 160 + 53⅓ … 160 + 106⅔, y 33⅓ … 66⅔
    raster = feature_raster(_one_hot(45, square_feature), geometry)
    rows, cols = np.nonzero(raster == 1.0)
    assert (cols.min(), cols.max() + 1, rows.min(), rows.max() + 1) == (213, 267, 33, 67)
    assert np.isfinite(raster).all()
    # The global image's features lie under the squares: none of them is visible over the image.
    assert not (feature_raster(_one_hot(45, 36 + 4), geometry) == 1.0).any()


def test_the_draw_order_puts_the_global_image_first() -> None:
    # The order the HTML report draws boxes in (`geometries[…].order`), the same as feature_raster's.
    order = draw_order(frame_geometry(2, 2, 42, 7, 2, SIZE)).tolist()
    assert sorted(order) == list(range(45))
    assert set(order[:9]) == set(range(36, 45)), "a square is drawn before a feature of the global image"


def test_the_bare_grid_keeps_every_square_and_puts_the_global_image_beside_them() -> None:
    geometry = frame_geometry(2, 2, 42, 7, 2, SIZE)
    canvas = grid_canvas(np.arange(45, dtype=float), geometry)
    assert canvas.shape == (6, 6 + 1 + 3)
    assert canvas[:3, :3].tolist() == np.arange(9).reshape(3, 3).tolist()  # first square, top left
    assert canvas[3:, 3:6].tolist() == np.arange(27, 36).reshape(3, 3).tolist()  # last square
    assert np.isnan(canvas[:, 6]).all()
    assert canvas[:3, 7:].tolist() == np.arange(36, 45).reshape(3, 3).tolist()
    assert np.isnan(canvas[3:, 7:]).all()
    assert sorted(canvas[np.isfinite(canvas)].tolist()) == list(range(45))
    # An unsplit image is the global image alone.
    assert grid_canvas(np.arange(9, dtype=float), frame_geometry(0, 0, 42, 7, 2, SIZE)).shape == (3, 3)
    assert layout_key(geometry) != layout_key(frame_geometry(1, 4, 42, 7, 2, SIZE))


@pytest.mark.integration
def test_internvl_tiles_are_drawn_over_the_thumbnail(tiny_models: dict[str, LoadedModel]) -> None:
    loaded = tiny_models["internvl"]
    geometry = loaded.adapter.geometry(loaded.model, loaded.processor, SIZE)
    assert [g.box for g in geometry.grids] == [(0, 0, 160, 200), (160, 0, 320, 200), (0, 0, 320, 200)]
    raster = feature_raster(np.arange(12, dtype=float), geometry)
    assert raster[50, 40] == 0 and raster[150, 120] == 3 and raster[150, 280] == 7
    assert np.nanmax(raster) == 7  # the thumbnail (features 8 … 11) lies under the tiles
    canvas = grid_canvas(np.arange(12, dtype=float), geometry)
    assert canvas.tolist()[0][:4] == [0, 1, 4, 5] and canvas.tolist()[1][5:] == [10, 11]


@pytest.mark.integration
def test_gemma3_crops_are_drawn_over_the_whole_image(tiny_models: dict[str, LoadedModel]) -> None:
    # Pan and scan: the whole image comes first, its crops after it.
    loaded = tiny_models["gemma3"]
    adapter = loaded.adapter
    assert isinstance(adapter, Gemma3Adapter)
    geometry = adapter.geometry(loaded.model, loaded.processor, (800, 300), do_pan_and_scan=True)
    assert geometry.grids[0].box == (0.0, 0.0, 800.0, 300.0)
    values = np.repeat(np.arange(4, dtype=float), 16)  # 0: whole image, 1 … 3: the crops
    raster = feature_raster(values, geometry)
    assert set(np.unique(raster).tolist()) == {1.0, 2.0, 3.0}
    assert raster[150, 100] == 1 and raster[150, 400] == 2 and raster[150, 700] == 3
    canvas = grid_canvas(values, geometry)
    assert canvas.shape == (4, 3 * 4 + 1 + 4)
    for crop in range(3):
        assert (canvas[:, 4 * crop : 4 * crop + 4] == crop + 1).all()
    assert np.isnan(canvas[:, 12]).all() and (canvas[:, 13:] == 0).all()
