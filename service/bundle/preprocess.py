"""Model input from an RGB image, exactly as the bundle's ``meta.json`` ``input`` block says.

Resize the (aligned face) crop to ``width x height`` with the named filter, order the channels,
scale pixel values to ``value_range``, subtract ``mean`` and divide by ``std`` per channel (in
the model's channel order), lay out as CHW float32. The last three steps are one affine map per
channel, ``PixelAffine``: the one implementation that serving (numpy), training (torch, on any
device) and synthesis (torch, both ways) use, so they cannot drift apart. Training records its
``InputSpec`` in the bundle it writes.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np
from PIL import Image
from pydantic import BaseModel, ConfigDict, Field

if TYPE_CHECKING:  # torch takes seconds to import; only its callers need it
    import torch

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
    framing: tuple[float, float, float, float] | None = Field(
        None,
        description="the box of a face crop the model sees, as fractions of its width and "
        "height (left, top, right, bottom; may reach past the crop: edge pixels repeated); "
        "null: the whole crop (see service.bundle.framing)",
    )


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


class PixelAffine:
    """``input = pixel * scale + shift`` per model channel, pixels in 0..255 (8-bit RGB).

    ``value = low + pixel / 255 * (high - low)`` then ``(value - mean) / std`` in one step, the
    coefficients computed in float64 and applied in float32. ``mean`` and ``std`` are in the
    model's channel order: BGR models see their channels reversed first.
    """

    def __init__(self, spec: InputSpec) -> None:
        low, high = spec.value_range
        std = np.asarray(spec.std, dtype=np.float64)
        self.scale = ((high - low) / 255.0 / std).astype(np.float32)  # (3,), model channel order
        self.shift = ((low - np.asarray(spec.mean, dtype=np.float64)) / std).astype(np.float32)
        self.bgr = spec.channel_order == "BGR"

    def __call__(self, pixels: np.ndarray) -> np.ndarray:
        """``(..., 3, H, W)`` RGB pixels (any real dtype, 0..255) -> float32 model input."""
        if self.bgr:
            pixels = pixels[..., ::-1, :, :]
        # one contiguous float32 copy, then in place: the same float32 operations in the same
        # order as ``pixels * scale + shift``, without its temporaries and final copy
        values = pixels.astype(np.float32, order="C")
        values *= self.scale[:, None, None]
        values += self.shift[:, None, None]
        return values

    def to_input(self, pixels: torch.Tensor) -> torch.Tensor:
        """``(..., 3, H, W)`` RGB pixels (uint8 or float, 0..255), on any device -> float32
        model input on that device."""

        if self.bgr:
            pixels = pixels.flip(-3)
        scale, shift = self._coefficients(pixels.device)
        return pixels.float() * scale + shift

    def to_pixels(self, x: torch.Tensor) -> torch.Tensor:
        """The inverse of ``to_input``: model input -> float RGB pixels (not rounded or
        clipped)."""
        scale, shift = self._coefficients(x.device)
        pixels = (x - shift) / scale
        return pixels.flip(-3) if self.bgr else pixels

    def bounds(self) -> tuple[torch.Tensor, torch.Tensor]:
        """Smallest and largest model input per channel (pixels 0 and 255), ``(3, 1, 1)`` each."""
        scale, shift = self._coefficients(None)
        return shift, 255.0 * scale + shift

    def _coefficients(self, device: torch.device | None) -> tuple[torch.Tensor, torch.Tensor]:
        import torch

        scale = torch.as_tensor(self.scale, device=device)[:, None, None]
        shift = torch.as_tensor(self.shift, device=device)[:, None, None]
        return scale, shift


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
        self.affine = PixelAffine(spec)

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
        return self.affine(np.asarray(image).transpose(2, 0, 1))


def _require(value: str, valid: Iterable[str], name: str) -> None:
    choices = list(valid)
    if value not in choices:
        raise ValueError(f"unsupported {name} {value!r}; valid: {', '.join(choices)}")
