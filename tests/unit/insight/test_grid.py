"""Grid images: documented sizes, tile placement, how filters and maps are coloured."""

from __future__ import annotations

import numpy as np
import pytest

from service.insight.grid import GAP, GridLayout, compose, filter_tiles, map_tiles
from service.render.colormap import SEQUENTIAL


@pytest.mark.parametrize(
    ("count", "tile", "columns", "rows", "width", "height"),
    [
        (32, 42, 6, 6, 266, 266),
        (128, 48, 12, 11, 602, 552),
        (9, 88, 3, 3, 272, 272),
        (1, 10, 1, 1, 14, 14),
    ],
)
def test_layout_has_the_documented_size(count, tile, columns, rows, width, height):
    layout = GridLayout.of(count, tile)

    assert (layout.columns, layout.rows, layout.width, layout.height) == (
        columns,
        rows,
        width,
        height,
    )


def test_compose_places_tiles_row_by_row_with_white_gaps():
    tiles = [np.full((4, 4, 3), value, dtype=np.uint8) for value in (10, 20, 30, 40, 50)]

    grid, layout = compose(tiles)

    assert grid.shape == (layout.height, layout.width, 3) == (2 + 2 * 6, 2 + 3 * 6, 3)
    row, column = divmod(4, layout.columns)  # the fifth tile: second row, second column
    y, x = GAP + row * (4 + GAP), GAP + column * (4 + GAP)
    assert (grid[y : y + 4, x : x + 4] == 50).all()
    assert (grid[:GAP] == 255).all() and (grid[:, 4 + GAP : 2 * GAP + 4] == 255).all()


def test_compose_refuses_tiles_of_different_sizes():
    with pytest.raises(ValueError, match="tile 1"):
        compose([np.zeros((4, 4, 3), np.uint8), np.zeros((5, 5, 3), np.uint8)])


def test_first_layer_filters_are_colour_and_deeper_ones_grey():
    rgb = np.zeros((2, 3, 7, 7))
    rgb[0, 0] = 1.0  # a pure red filter
    deep = np.random.default_rng(0).normal(size=(3, 16, 3, 3))

    colour_tiles, grey_tiles = filter_tiles(rgb), filter_tiles(deep)

    assert len(colour_tiles) == 2 and colour_tiles[0].shape == (42, 42, 3)
    assert tuple(colour_tiles[0][0, 0]) == (255, 128, 128)  # red at its peak, others at 0 (grey)
    assert (colour_tiles[1] == 128).all()  # an all-zero filter is mid-grey
    assert grey_tiles[0].shape == (48, 48, 3)
    assert all(
        (tile[..., 0] == tile[..., 1]).all() and (tile[..., 1] == tile[..., 2]).all()
        for tile in grey_tiles
    )


def test_maps_share_one_scale():
    maps = np.stack([np.full((8, 8), 4.0), np.full((8, 8), 2.0), np.zeros((8, 8))])
    maps[0, 0, 0] = 400.0  # one outlying cell does not set the scale

    strong, weak, silent = map_tiles(maps)

    assert strong.shape == (96, 96, 3)  # 8 x 12
    assert tuple(strong[50, 50]) == tuple(strong[0, 0]) == tuple(SEQUENTIAL[255])
    assert tuple(weak[50, 50]) == tuple(SEQUENTIAL[128])
    assert tuple(silent[50, 50]) == tuple(SEQUENTIAL[0])
