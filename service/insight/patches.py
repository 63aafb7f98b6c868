"""Top patches: the training-image regions that excite each channel of a layer most.

Computed offline by the training package (``python -m training insight``) and stored in the
bundle, because the service has no training images. The format, written and read through
``TopPatchIndex`` here, in ``<bundle>/insight/``:

- ``top_patches.json``: ``TopPatchIndex``; for every stored layer and channel, its patches
  strongest first (training image, unit position, activation, receptive-field box);
- one sprite image per layer (``top_patches_<layer>.png`` or ``.jpg``): row ``c`` holds channel
  ``c``'s patches left to right, each ``tile x tile`` pixels, no gaps. Sprites of tiles smaller
  than ``LOSSLESS_BELOW`` pixels are PNG; larger ones JPEG at quality 90 without chroma
  subsampling (for the default layers 1.3 MB in all instead of 4.3 MB as PNG; the difference is
  not visible, and the tiles are wide enough that JPEG's 8x8 blocks hardly cross their borders).

A patch is the unit's whole receptive field in the model input (the resized training crop),
centred on the unit; where the field reaches past the image it is filled with the input mean
colour, which is what the network's own zero padding stands for. Fields wider than
``MAX_TILE`` pixels are scaled down to it.
"""

from __future__ import annotations

import json
import threading
from pathlib import Path
from typing import Literal

import numpy as np
from PIL import Image
from pydantic import BaseModel, ConfigDict, Field

INSIGHT_DIR = "insight"
INDEX_NAME = "top_patches.json"
MAX_TILE = 64
LOSSLESS_BELOW = 32
JPEG_OPTIONS = {"quality": 90, "subsampling": 0}


def sprite_name(layer: str, tile: int) -> str:
    return f"top_patches_{layer}.{'png' if tile < LOSSLESS_BELOW else 'jpg'}"


def save_sprite(sprite: np.ndarray, path: Path) -> None:
    """Write a sprite ``(rows, cols, 3)`` uint8 in the format its name says."""
    options = JPEG_OPTIONS if path.suffix == ".jpg" else {"optimize": True}
    Image.fromarray(sprite).save(path, **options)


class Patch(BaseModel):
    model_config = ConfigDict(frozen=True)

    image: str = Field(
        description="training image, relative to the data root (split.json's train list)"
    )
    label: str = Field(description="its class id")
    row: int = Field(description="the unit's row in the layer's activation map")
    col: int = Field(description="the unit's column in the layer's activation map")
    activation: float = Field(
        description="the unit's activation: the channel's largest on that image"
    )
    box: tuple[int, int, int, int] = Field(
        description="the unit's receptive field in the model input as x0, y0, x1, y1 (end "
        "exclusive); may reach outside the input"
    )


class LayerPatches(BaseModel):
    sprite: str = Field(description="sprite file name in the insight folder")
    tile: int = Field(description="pixels per patch side in the sprite")
    field_size: int = Field(description="receptive field side in model-input pixels")
    channels: list[list[Patch]] = Field(description="per channel, its patches strongest first")


class TopPatchIndex(BaseModel):
    """``insight/top_patches.json``."""

    split: Literal["train"] = "train"
    images: int = Field(description="training images scanned")
    per_channel: int
    model_sha256: str = Field(description="sha256 of the twin (model.pt2) that computed them")
    layers: dict[str, LayerPatches]


class InsightBlock(BaseModel):
    """``meta.json["insight"]``: what the insight folder holds."""

    model_config = ConfigDict(extra="allow")

    top_patches: str = Field(description="path of the index in the bundle")
    layers: list[str]
    per_channel: int
    split: Literal["train"] = "train"
    images: int
    created_at: str


class TopPatches:
    """A bundle's stored top patches: the index is read at once, each sprite on first use."""

    def __init__(self, folder: Path, index: TopPatchIndex) -> None:
        self.folder = folder
        self.index = index
        self._sprites: dict[str, np.ndarray] = {}
        self._lock = threading.Lock()

    @classmethod
    def load(cls, bundle_dir: Path, block: dict | None) -> TopPatches | None:
        """The top patches that ``meta.json["insight"]`` (``block``) lists, or None without."""
        if not block:
            return None
        info = InsightBlock.model_validate(block)
        path = bundle_dir / info.top_patches
        return cls(path.parent, TopPatchIndex.model_validate(json.loads(path.read_text())))

    @property
    def layers(self) -> list[str]:
        return list(self.index.layers)

    def patches(self, layer: str, channel: int) -> list[Patch]:
        return self.index.layers[layer].channels[channel]

    def tiles(self, layer: str, channel: int) -> list[np.ndarray]:
        """Channel ``channel``'s patches, strongest first, as ``(tile, tile, 3)`` uint8."""
        stored = self.index.layers[layer]
        sprite = self._sprite(layer)
        tile = stored.tile
        row = sprite[channel * tile : (channel + 1) * tile]
        return [row[:, k * tile : (k + 1) * tile] for k in range(len(stored.channels[channel]))]

    def _sprite(self, layer: str) -> np.ndarray:
        with self._lock:
            if layer not in self._sprites:
                with Image.open(self.folder / self.index.layers[layer].sprite) as image:
                    self._sprites[layer] = np.asarray(image.convert("RGB"))
            return self._sprites[layer]
