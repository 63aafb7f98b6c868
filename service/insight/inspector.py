"""Insight into one served model, built on first use and kept while the model is served.

An ``Inspector`` (one per served model, made by the app's lifespan) gives the model's layers,
their receptive fields (from the twin's graph), filter grids, the strongest activation maps of
an input, the stored top patches, and synthesised images (kept in the LRU it is given, keyed by
the twin's sha256 and every parameter, so asking again is free).
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import torch
from PIL import Image

from service.bundle.format import TWIN_FILE, BundleMeta
from service.common.cancellation import Cancellation
from service.common.lru import LruCache
from service.insight.architecture import ReceptiveField, layer_filters, receptive_fields
from service.insight.grid import (
    MAP_TILE,
    GridLayout,
    compose,
    enlarge,
    filter_tiles,
    map_tiles,
    zoom_for,
)
from service.insight.maximize import MaximizeParams, Objective, PixelCodec, Synthesis, synthesize
from service.insight.patches import TopPatches
from service.render.png import encode_png

SYNTHESIS_CACHE_ENTRIES = 32
SYNTHESIS_CACHE_BYTES = 8 * 1024 * 1024


def synthesis_cache() -> LruCache:
    """An LRU for ``Inspector.synthesize``, bounded in entries and bytes (keys hold the twin's
    sha256, so one cache never mixes models)."""
    return LruCache(SYNTHESIS_CACHE_ENTRIES, SYNTHESIS_CACHE_BYTES)


class InspectedModel(Protocol):
    """What insight needs of a served model (``service.inference.model.ServingModel`` is one): its
    metadata, bundle directory and torch twin. A protocol, so insight never imports the model."""

    meta: BundleMeta
    bundle_dir: Path
    twin: Any


@dataclass(frozen=True)
class Grid:
    """A grid image as PNG bytes and where its tiles are."""

    png: bytes
    layout: GridLayout


@dataclass(frozen=True)
class Activations:
    """The ``top`` strongest channels of a layer for one input, strongest first: ``channels``
    (indices), their ``means`` and ``peaks``, and their ``maps`` ``(top, h, w)``."""

    channels: list[int]
    means: list[float]
    peaks: list[float]
    maps: np.ndarray


class Inspector:
    """What one served model has learned. Thread-safe; heavy parts are computed on first use."""

    def __init__(self, model: InspectedModel, syntheses: LruCache | None = None) -> None:
        self.model = model
        self.syntheses = syntheses if syntheses is not None else synthesis_cache()
        self.channels = {layer.name: layer.channels or 0 for layer in model.meta.layers}
        self._filters: dict[str, Grid] = {}
        self._codec = PixelCodec(model.meta.input)

    @property
    def layers(self) -> list[str]:
        return list(self.channels)

    @cached_property
    def fields(self) -> dict[str, ReceptiveField]:
        return receptive_fields(self.model.twin)

    @cached_property
    def top_patches(self) -> TopPatches | None:
        extra = self.model.meta.model_extra or {}
        return TopPatches.load(self.model.bundle_dir, extra.get("insight"))

    def filters(self, layer: str) -> Grid:
        """The filters that make ``layer``'s channels as a grid (``grid.filter_tiles``)."""
        if layer not in self._filters:
            weights = layer_filters(self.model.twin, layer).cpu().numpy()
            self._filters[layer] = _grid(filter_tiles(weights))
        return self._filters[layer]

    def activations(self, x: np.ndarray, layer: str, top: int) -> Activations:
        """``x`` ``(3, H, W)`` model input -> the ``top`` channels of ``layer`` with the
        largest mean activation (all of them when the layer has fewer)."""
        with torch.no_grad():
            _, activations = self.model.twin(torch.from_numpy(np.ascontiguousarray(x[None])))
        maps = activations[layer][0].double().cpu().numpy()
        means = maps.mean(axis=(1, 2))
        order = np.argsort(-means, kind="stable")[:top]
        return Activations(
            channels=[int(c) for c in order],
            means=[float(means[c]) for c in order],
            peaks=[float(maps[c].max()) for c in order],
            maps=maps[order],
        )

    def activation_grid(self, activations: Activations) -> Grid:
        return _grid(map_tiles(activations.maps))

    def patch_grid(self, layer: str, channel: int) -> Grid:
        """The stored top patches of a channel, strongest first, enlarged to about
        ``MAP_TILE`` pixels. Only for layers ``top_patches`` holds."""
        if self.top_patches is None:
            raise LookupError(f"bundle {self.model.meta.name} stores no top patches")
        tiles = self.top_patches.tiles(layer, channel)
        zoom = zoom_for(tiles[0].shape[0], MAP_TILE)
        return _grid([enlarge(tile, zoom) for tile in tiles])

    def synthesize(
        self,
        objective: Objective,
        params: MaximizeParams,
        cancellation: Cancellation | None = None,
    ) -> tuple[Synthesis, bool]:
        """The synthesised image for ``objective`` (blocking; seconds unless cached), and
        whether it came from the cache. A cancelled synthesis raises ``Cancelled`` and is not
        cached."""
        key = "|".join(
            (self.model.meta.files[TWIN_FILE].sha256, repr(objective), params.model_dump_json())
        )
        found = self.syntheses.get(key)
        if found is not None:
            return found, True
        result = synthesize(self.model.twin, self._codec, objective, params, cancellation)
        self.syntheses.put(key, result)
        return result, False


def _grid(tiles: list[np.ndarray]) -> Grid:
    pixels, layout = compose(tiles)
    return Grid(encode_png(Image.fromarray(pixels)), layout)
