"""Model input from an RGB image, exactly as the bundle's ``meta.json`` ``input`` block says.

Resize the (aligned face) crop to ``width x height`` with the named filter, scale pixel values to
``value_range``, order the channels, subtract ``mean`` and divide by ``std`` per channel, lay out
as CHW float32. The training package records the same block from its eval transform, so training
and serving cannot drift apart.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from PIL import Image
from pydantic import BaseModel, ConfigDict, Field

RESAMPLING_FILTERS: dict[str, Image.Resampling] = {
    "nearest": Image.Resampling.NEAREST,
    "bilinear": Image.Resampling.BILINEAR,
    "bicubic": Image.Resampling.BICUBIC,
    "lanczos": Image.Resampling.LANCZOS,
    "box": Image.Resampling.BOX,
    "hamming": Image.Resampling.HAMMING,
}


class InputSpec(BaseModel):
    """``meta.json`` ``input``: what the model expects."""

    model_config = ConfigDict(extra="allow", frozen=True)

    height: int = Field(gt=0)
    width: int = Field(gt=0)
    resize: str = "bilinear"
    channel_order: str = "RGB"
    layout: str = "NCHW"
    dtype: str = "float32"
    value_range: tuple[float, float] = (0.0, 255.0)
    mean: tuple[float, float, float]
    std: tuple[float, float, float]


@dataclass(frozen=True)
class Box:
    """A rectangle in image pixel coordinates: left ``x``, top ``y``, ``width``, ``height``."""

    x: int
    y: int
    width: int
    height: int

    @classmethod
    def whole(cls, image: Image.Image) -> Box:
        return cls(0, 0, image.width, image.height)


class Preprocessor:
    """Turns RGB images into model input as an ``InputSpec`` says.

    Raises ``ValueError`` at construction for a spec it cannot honour (unknown filter, channel
    order, layout or dtype), naming the valid choices.
    """

    def __init__(self, spec: InputSpec) -> None:
        _require(spec.resize, RESAMPLING_FILTERS, "input.resize")
        _require(spec.channel_order, ("RGB", "BGR"), "input.channel_order")
        _require(spec.layout, ("NCHW",), "input.layout")
        _require(spec.dtype, ("float32",), "input.dtype")
        self.spec = spec
        self._filter = RESAMPLING_FILTERS[spec.resize]
        low, high = spec.value_range
        # value = low + pixel / 255 * (high - low), then (value - mean) / std, in one affine step
        std = np.asarray(spec.std, dtype=np.float64)
        self._scale = ((high - low) / 255.0 / std).astype(np.float32).reshape(3, 1, 1)
        self._shift = ((low - np.asarray(spec.mean, dtype=np.float64)) / std).astype(
            np.float32
        ).reshape(3, 1, 1)

    @property
    def size(self) -> tuple[int, int]:
        """``(width, height)`` of the model input."""
        return self.spec.width, self.spec.height

    def __call__(self, image: Image.Image) -> np.ndarray:
        """``image`` (RGB, the aligned face crop) as ``(3, H, W)`` float32."""
        if image.mode != "RGB":
            raise ValueError(f"expected an RGB image, got mode {image.mode}")
        if image.size != self.size:
            image = image.resize(self.size, self._filter)
        pixels = np.asarray(image, dtype=np.float32).transpose(2, 0, 1)
        if self.spec.channel_order == "BGR":
            pixels = pixels[::-1]
        return np.ascontiguousarray(pixels * self._scale + self._shift, dtype=np.float32)


def _require(value: str, valid: object, name: str) -> None:
    choices = list(valid)  # type: ignore[call-overload]
    if value not in choices:
        raise ValueError(f"unsupported {name} {value!r}; valid: {', '.join(choices)}")
