"""Drawing heatmaps, for every method alike: colour, transparency, overlay, PNG, JSON rows.

Unsigned maps (``[0, 1]``) use a sequential colormap (inferno), signed maps (``[-1, 1]``) a
diverging one (red = evidence for the target, blue = against, white = neither). Opacity grows
with magnitude, so unimportant pixels stay see-through. Colormaps are 256-entry lookup tables
interpolated from anchor colours taken from matplotlib's ``inferno`` and ``RdBu_r`` at 17 even
steps, so the service needs no plotting library. Renders of large uploads are scaled down to at
most ``MAX_RENDER_PIXELS``, which bounds the memory and time one PNG can take.
"""

from __future__ import annotations

import math

import numpy as np
from PIL import Image

from ..images import encode_png
from .heatmap import BoxCorners, Heatmap

DEFAULT_OPACITY = 0.8
JSON_DECIMALS = 4
# PNG renders (format=png|overlay) are the upload's size up to this many pixels (2048 x 2048),
# and scaled down to it beyond: the map itself has the model input's resolution (150 x 150), so
# a larger render adds no detail, only memory (~25 bytes a pixel while drawing an overlay).
MAX_RENDER_PIXELS = 2048 * 2048
COLORIZE_ROWS = 256

_INFERNO_ANCHORS = (
    (0, 0, 4), (11, 7, 36), (33, 12, 74), (61, 9, 101), (87, 16, 110), (113, 25, 110),
    (138, 34, 106), (163, 44, 97), (188, 55, 84), (210, 70, 68), (228, 90, 49), (241, 115, 29),
    (249, 142, 9), (252, 172, 17), (249, 203, 53), (242, 234, 105), (252, 255, 164),
)  # fmt: skip
_RDBU_R_ANCHORS = (
    (5, 48, 97), (23, 82, 144), (42, 113, 178), (63, 142, 192), (107, 172, 209),
    (155, 201, 224), (194, 221, 236), (224, 236, 243), (247, 246, 246), (251, 229, 216),
    (251, 204, 180), (245, 170, 137), (228, 128, 102), (208, 85, 72), (186, 40, 50),
    (147, 14, 38), (103, 0, 31),
)  # fmt: skip


def lookup_table(anchors: tuple[tuple[int, int, int], ...], size: int = 256) -> np.ndarray:
    """``(size, 3)`` uint8 colours linearly interpolated between evenly spaced ``anchors``."""
    colours = np.asarray(anchors, dtype=np.float64)
    positions = np.linspace(0.0, 1.0, len(colours))
    steps = np.linspace(0.0, 1.0, size)
    channels = [np.interp(steps, positions, colours[:, c]) for c in range(3)]
    return np.round(np.stack(channels, axis=1)).astype(np.uint8)


SEQUENTIAL = lookup_table(_INFERNO_ANCHORS)
DIVERGING = lookup_table(_RDBU_R_ANCHORS)


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
    e.g. from ``Heatmap.place`` or any other mapping onto the image)."""
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


def heatmap_png(
    heatmap: Heatmap,
    image_size: tuple[int, int],
    box: BoxCorners | None = None,
    opacity: float = DEFAULT_OPACITY,
) -> bytes:
    """Transparent RGBA PNG of ``image_size`` = ``(width, height)``, the map placed in ``box``
    (default: the whole image) and transparent outside it: ready to lay over the upload."""
    return rgba_png(heatmap.place(image_size, box), heatmap.signed, opacity)


def overlay_png(
    image: Image.Image,
    heatmap: Heatmap,
    box: BoxCorners | None = None,
    opacity: float = DEFAULT_OPACITY,
) -> bytes:
    """``image`` with the heatmap blended over it (in ``box``), as RGB PNG bytes."""
    return blend_png(image, heatmap.place(image.size, box), heatmap.signed, opacity)


def as_rows(values: np.ndarray, decimals: int = JSON_DECIMALS) -> list[list[float]]:
    """A ``(H, W)`` array as JSON-friendly rows of rounded floats."""
    return np.round(np.asarray(values, dtype=np.float64), decimals).tolist()
