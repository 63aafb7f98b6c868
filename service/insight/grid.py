"""Tiles in a grid image: filters, activation maps and image patches, drawn alike.

A grid of ``n`` tiles of ``tile x tile`` pixels has ``columns = ceil(sqrt(n))`` columns and
``rows = ceil(n / columns)`` rows, separated and framed by ``GAP`` white pixels, so it is
``columns * tile + (columns + 1) * GAP`` wide and ``rows * tile + (rows + 1) * GAP`` high. Small
things are enlarged by a whole factor (nearest neighbour: every weight or map cell stays a crisp
square): a ``k x k`` filter by ``FILTER_TILE // k``, an ``s x s`` map or patch by
``MAP_TILE // s`` (at least 1).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from service.render.colormap import SEQUENTIAL

GAP = 2
BACKGROUND = 255
FILTER_TILE = 48
MAP_TILE = 96
SCALE_QUANTILE = 0.995


@dataclass(frozen=True)
class GridLayout:
    """Where the tiles of a grid are: ``columns`` x ``rows`` tiles of ``tile`` pixels."""

    count: int
    tile: int
    columns: int
    rows: int

    @classmethod
    def of(cls, count: int, tile: int) -> GridLayout:
        columns = max(1, math.ceil(math.sqrt(count)))
        return cls(count, tile, columns, max(1, math.ceil(count / columns)))

    @property
    def width(self) -> int:
        return self.columns * self.tile + (self.columns + 1) * GAP

    @property
    def height(self) -> int:
        return self.rows * self.tile + (self.rows + 1) * GAP


def zoom_for(side: int, target: int) -> int:
    """The whole enlargement that brings ``side`` pixels closest to ``target`` from below."""
    return max(1, target // side)


def enlarge(tile: np.ndarray, zoom: int) -> np.ndarray:
    """``(h, w, 3)`` -> ``(h * zoom, w * zoom, 3)``, every pixel a ``zoom x zoom`` square."""
    return tile if zoom == 1 else tile.repeat(zoom, axis=0).repeat(zoom, axis=1)


def compose(tiles: Sequence[np.ndarray]) -> tuple[np.ndarray, GridLayout]:
    """Square ``(tile, tile, 3)`` uint8 tiles, row by row, as one ``(height, width, 3)`` uint8
    grid (``GridLayout``)."""
    if not tiles:
        raise ValueError("a grid needs at least one tile")
    side = tiles[0].shape[0]
    layout = GridLayout.of(len(tiles), side)
    grid = np.full((layout.height, layout.width, 3), BACKGROUND, dtype=np.uint8)
    for index, tile in enumerate(tiles):
        if tile.shape != (side, side, 3):
            raise ValueError(f"tile {index} has shape {tile.shape}, expected {(side, side, 3)}")
        row, column = divmod(index, layout.columns)
        y, x = GAP + row * (side + GAP), GAP + column * (side + GAP)
        grid[y : y + side, x : x + side] = tile
    return grid, layout


def filter_tiles(weights: np.ndarray) -> list[np.ndarray]:
    """``(C_out, C_in, k, k)`` conv weights -> one tile per filter, enlarged to about
    ``FILTER_TILE`` pixels. Three input channels (the first layer) are drawn as RGB; more are
    averaged into one grey map. Each filter is scaled by its own largest magnitude: mid-grey is
    0, white / full colour its largest positive weight, black its most negative."""
    weights = np.asarray(weights, dtype=np.float64)
    if weights.shape[1] != 3:
        weights = np.repeat(weights.mean(axis=1, keepdims=True), 3, axis=1)
    peak = np.abs(weights).max(axis=(1, 2, 3), keepdims=True)
    scaled = 0.5 + 0.5 * weights / np.where(peak > 0, peak, 1.0)
    pixels = np.round(scaled * 255).astype(np.uint8).transpose(0, 2, 3, 1)
    zoom = zoom_for(weights.shape[-1], FILTER_TILE)
    return [enlarge(tile, zoom) for tile in pixels]


def map_tiles(maps: np.ndarray) -> list[np.ndarray]:
    """``(n, s, s)`` non-negative activation maps -> inferno tiles of about ``MAP_TILE`` pixels,
    on one scale for all, so brighter tiles are stronger maps: black is 0, pale yellow the
    ``SCALE_QUANTILE`` quantile of all their values and above (a few outlying cells would
    otherwise leave every map dark)."""
    maps = np.asarray(maps, dtype=np.float64)
    peak = float(np.quantile(maps, SCALE_QUANTILE, method="lower")) if maps.size else 0.0
    scaled = np.clip(maps / peak, 0.0, 1.0) if peak > 0 else np.zeros_like(maps)
    coloured = SEQUENTIAL[np.round(scaled * 255).astype(np.intp)]
    zoom = zoom_for(maps.shape[-1], MAP_TILE)
    return [enlarge(tile, zoom) for tile in coloured]
