"""Drawing heatmaps, for every method alike: colour, transparency, overlay, PNG, JSON rows.

Unsigned maps (``[0, 1]``) use the sequential colormap, signed maps (``[-1, 1]``) the diverging
one (``service.render.colormap``). Opacity grows with magnitude, so unimportant pixels stay
see-through. Renders of large uploads are scaled down to at most ``MAX_RENDER_PIXELS``, which
bounds the memory and time one PNG can take. Maps come here already laid onto the upload
(``AlignedFace.to_image``).
"""

from __future__ import annotations

import io
import math

import numpy as np
from PIL import Image

from service.render.colormap import DIVERGING, SEQUENTIAL

DEFAULT_OPACITY = 0.8
JSON_DECIMALS = 4
# PNG renders (format=png|overlay) are the upload's size up to this many pixels (2048 x 2048),
# and scaled down to it beyond: the map itself has the model input's resolution (150 x 150), so
# a larger render adds no detail, only memory (~25 bytes a pixel while drawing an overlay).
MAX_RENDER_PIXELS = 2048 * 2048
COLORIZE_ROWS = 256


def colorize(values: np.ndarray, signed: bool, opacity: float = DEFAULT_OPACITY) -> np.ndarray:
    """``(H, W)`` values in ``[0, 1]`` (or ``[-1, 1]`` if ``signed``) -> ``(H, W, 4)`` uint8 RGBA,
    alpha = ``opacity`` x magnitude.

    Computed ``COLORIZE_ROWS`` rows at a time, so the float temporaries stay a few MB whatever
    the image size: memory is the 4-byte-a-pixel result.
    """
    if not 0.0 <= opacity <= 1.0:
        raise ValueError(f"opacity must be in [0, 1], got {opacity}")
    values = np.asarray(values)
    rgba = np.empty((*values.shape, 4), dtype=np.uint8)
    for top in range(0, values.shape[0], COLORIZE_ROWS):
        rows = slice(top, top + COLORIZE_ROWS)
        rgba[rows] = _colorize_rows(values[rows], signed, opacity)
    return rgba


def _colorize_rows(values: np.ndarray, signed: bool, opacity: float) -> np.ndarray:
    if signed:
        clipped = np.clip(values, -1.0, 1.0)
        index = np.round((clipped + 1.0) * 127.5).astype(np.intp)
        table = DIVERGING
    else:
        clipped = np.clip(values, 0.0, 1.0)
        index = np.round(clipped * 255.0).astype(np.intp)
        table = SEQUENTIAL
    alpha = np.round(np.abs(clipped) * opacity * 255.0).astype(np.uint8)
    return np.dstack([table[index], alpha])


def render_factor(image_size: tuple[int, int], max_pixels: int = MAX_RENDER_PIXELS) -> float:
    """The factor (<= 1) by which a PNG of an image of ``image_size`` = ``(width, height)`` is
    drawn: 1 up to ``max_pixels``, beyond it the largest that keeps the area within them."""
    width, height = image_size
    return min(1.0, math.sqrt(max_pixels / (width * height)))


def scaled_size(image_size: tuple[int, int], factor: float) -> tuple[int, int]:
    """``image_size`` times ``factor``, rounded, at least 1 pixel a side."""
    width, height = image_size
    return max(1, round(width * factor)), max(1, round(height * factor))


def rgba_image(placed: np.ndarray, signed: bool, opacity: float = DEFAULT_OPACITY) -> Image.Image:
    """A transparent RGBA picture of a map already in image coordinates (``(height, width)``,
    e.g. from ``AlignedFace.to_image``)."""
    return Image.fromarray(colorize(placed, signed, opacity))


def rgba_png(placed: np.ndarray, signed: bool, opacity: float = DEFAULT_OPACITY) -> bytes:
    """``rgba_image`` as PNG bytes."""
    return encode_png(rgba_image(placed, signed, opacity))


def blend_png(
    image: Image.Image, placed: np.ndarray, signed: bool, opacity: float = DEFAULT_OPACITY
) -> bytes:
    """``image`` (RGB) with the map (in its coordinates) blended over it, as RGB PNG bytes.

    ``placed`` may be smaller than ``image`` (a render scaled down by ``render_factor``): the
    image is then scaled down to it first."""
    size = (placed.shape[1], placed.shape[0])
    if image.size != size:
        image = image.resize(size, Image.Resampling.BILINEAR, reducing_gap=3.0)
    layer = rgba_image(placed, signed, opacity)
    return encode_png(Image.alpha_composite(image.convert("RGBA"), layer).convert("RGB"))


def as_rows(values: np.ndarray, decimals: int = JSON_DECIMALS) -> list[list[float]]:
    """A ``(H, W)`` array as JSON-friendly rows of rounded floats."""
    return np.round(np.asarray(values, dtype=np.float64), decimals).tolist()


def encode_png(image: Image.Image) -> bytes:
    """``image`` as PNG bytes (any mode Pillow can write as PNG: RGB, RGBA, L)."""
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()
