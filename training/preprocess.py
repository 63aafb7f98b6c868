"""The eval-time preprocessing: the bundle's ``InputSpec`` with what training does with it.

An image becomes model input in five steps: decode to RGB, cut out the spec's ``framing`` box
(when it has one), resize to ``width x height`` with the spec's filter, scale pixels to
``value_range`` and standardise per channel with ``mean`` and ``std``. Training caches images
after step 3 (uint8), so augmentation works on the same pixels the service will see; steps 4 and
5 are the service's own ``PixelAffine``, and the bundle's ``meta.json["input"]`` records this
spec verbatim. There is one spec and one affine, in ``service.bundle.preprocess``; this class only
adds decoding from files and batches on any device.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image, ImageOps

from service.bundle.framing import frame
from service.bundle.preprocess import RESAMPLING_FILTERS, InputSpec, PixelAffine


class Preprocessing(InputSpec):
    """An ``InputSpec`` (keyword fields: ``height``, ``width``, ``mean``, ``std``, ...) that
    can load training images and standardise batches."""

    def load(self, path: str | Path) -> np.ndarray:
        """Decode, orient (EXIF), convert to RGB, cut the spec's ``framing`` box out of the
        crop (``service.bundle.framing.frame``, as the service does) and resize: (height, width, 3)
        uint8."""
        with Image.open(path) as stored:
            image = ImageOps.exif_transpose(stored).convert("RGB")
            if self.framing is not None:
                image = frame(image, self.framing)[0]
            size = (self.width, self.height)
            return np.asarray(image.resize(size, RESAMPLING_FILTERS[self.resize]))

    def standardise(self, images: torch.Tensor) -> torch.Tensor:
        """(N, 3, H, W) RGB uint8 or float on the 0..255 scale -> float32 model input, on the
        images' device."""
        return PixelAffine(self).to_input(images)

    def to_meta(self) -> dict[str, Any]:
        """``meta.json["input"]``."""
        return self.model_dump(mode="json")

    @classmethod
    def from_meta(cls, block: dict[str, Any]) -> Preprocessing:
        """The inverse of ``to_meta``: from a bundle's ``meta.json["input"]``."""
        return cls.model_validate(block)
