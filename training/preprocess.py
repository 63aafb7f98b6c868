"""The eval-time preprocessing: the one definition that training, export and serving share.

An image becomes model input in four steps: decode to RGB, resize to ``width x height`` with
PIL's bilinear filter, scale pixels to ``value_range``, standardise per channel with ``mean`` and
``std``. Training caches images after step 2 (uint8), so augmentation works on the same pixels the
service will see; the bundle's ``meta.json["input"]`` records this object verbatim.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np
import torch
from PIL import Image, ImageOps


@dataclass(frozen=True)
class Preprocessing:
    height: int
    width: int
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    value_range: tuple[float, float] = (0.0, 255.0)
    resize: str = "bilinear"
    channel_order: str = "RGB"
    layout: str = "NCHW"
    dtype: str = "float32"

    def load(self, path) -> np.ndarray:
        """Decode, orient (EXIF), convert to RGB and resize: (height, width, 3) uint8."""
        with Image.open(path) as image:
            image = ImageOps.exif_transpose(image).convert("RGB")
            return np.asarray(image.resize((self.width, self.height), Image.BILINEAR))

    def standardise(self, images: torch.Tensor) -> torch.Tensor:
        """(N, 3, H, W) uint8 or float on the 0..255 scale -> float32 model input."""
        scale = self.value_range[1] / 255.0
        mean = torch.tensor(self.mean, dtype=torch.float32, device=images.device)[:, None, None]
        std = torch.tensor(self.std, dtype=torch.float32, device=images.device)[:, None, None]
        return (images.float() * scale - mean) / std

    def to_meta(self) -> dict:
        return asdict(self)

    @classmethod
    def from_meta(cls, block: dict) -> "Preprocessing":
        """The inverse of ``to_meta``: from a bundle's ``meta.json["input"]``."""
        return cls(**{k: tuple(v) if isinstance(v, list) else v for k, v in block.items()})
