"""Maps sent to be graded (``POST /explain/evaluate``): a JSON grid of numbers or a greyscale PNG.

``read_map`` turns the bytes of the request's ``map`` part into an ``(H, W)`` float64 array, or
raises a clear error: 413 ``file_too_large`` / ``too_many_pixels`` beyond ``MAX_MAP_BYTES`` and
``MAX_MAP_PIXELS``, 422 ``bad_map`` for anything else it cannot read. JSON is either a list of
rows or an object with ``values`` (the ``heatmap`` of an explanation answer, as it came);
non-finite numbers (``NaN``, ``Infinity``) are refused. A PNG is read as its grey levels (mode
``L``, ``I;16``, ``I`` or ``F``); a colour PNG is refused rather than guessed at.
"""

from __future__ import annotations

import io
import json
from typing import Any

import numpy as np
from PIL import Image, UnidentifiedImageError

from service.errors import BadMap, TooManyPixels, exception_text

MAX_MAP_BYTES = 16 * 1024 * 1024
MAX_MAP_PIXELS = 2048 * 2048
# maps are graded in float32: a larger magnitude would become infinity there
MAX_MAP_MAGNITUDE = float(np.finfo(np.float32).max)
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
GREY_MODES = ("L", "I;16", "I;16B", "I", "F")


def read_map(data: bytes) -> np.ndarray:
    """The map in ``data`` (JSON or greyscale PNG) as ``(H, W)`` float64."""
    if not data:
        raise BadMap("the map is empty: send a JSON grid of numbers or a greyscale PNG")
    values = _png(data) if data.startswith(PNG_MAGIC) else _json(data)
    if values.ndim != 2 or min(values.shape) < 1:
        raise BadMap(f"the map must be a 2-D grid (rows of numbers), got shape {values.shape}")
    if values.size > MAX_MAP_PIXELS:
        raise TooManyPixels(
            f"the map has {values.size} values, more than {MAX_MAP_PIXELS}: send it at the "
            "model input's size or the JSON grid's"
        )
    if not np.all(np.isfinite(values)):
        raise BadMap("the map holds non-finite values (NaN or infinity)")
    if np.abs(values).max() > MAX_MAP_MAGNITUDE:
        raise BadMap(
            f"the map holds values beyond {MAX_MAP_MAGNITUDE:.3g} in magnitude, the range of "
            "the 32-bit floats it is graded in: scale it down (only the order of its values "
            "counts)"
        )
    return values


def _json(data: bytes) -> np.ndarray:
    try:
        parsed = json.loads(data, parse_constant=_refuse_constant)
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise BadMap(
            "the map is neither a PNG nor JSON: send rows of numbers, an object with "
            "'values', or a greyscale PNG"
        ) from exc
    except (ValueError, RecursionError) as exc:  # an integer of 4300+ digits, or deep nesting
        raise BadMap(
            "the map's JSON holds a number too long to read or is nested too deeply: send rows "
            "of numbers"
        ) from exc
    if isinstance(parsed, dict):
        if "values" not in parsed:
            raise BadMap("a JSON object map needs 'values': its rows of numbers")
        parsed = parsed["values"]
    return _numbers(parsed)


def _refuse_constant(name: str) -> Any:
    raise BadMap(f"the map holds {name}: every value must be a finite number")


def _numbers(rows: Any) -> np.ndarray:
    if not isinstance(rows, list) or not rows or not all(isinstance(r, list) for r in rows):
        raise BadMap("the map must be a non-empty list of rows, each a list of numbers")
    width = len(rows[0])
    if any(len(row) != width for row in rows):
        raise BadMap("the map's rows differ in length: every row needs as many numbers")
    flat = [value for row in rows for value in row]
    if not all(isinstance(v, int | float) and not isinstance(v, bool) for v in flat):
        raise BadMap("the map holds something other than numbers")
    try:
        values = np.asarray(flat, dtype=np.float64)
    except OverflowError as exc:  # an integer beyond float64
        raise BadMap("the map holds a number too large for a floating-point value") from exc
    return values.reshape(len(rows), width)


def _png(data: bytes) -> np.ndarray:
    try:
        with Image.open(io.BytesIO(data)) as image:
            if image.width * image.height > MAX_MAP_PIXELS:
                raise TooManyPixels(
                    f"the map is {image.width}x{image.height}, more than {MAX_MAP_PIXELS} "
                    "pixels: send it at the model input's size or the JSON grid's"
                )
            if image.mode not in GREY_MODES:
                raise BadMap(
                    f"the map PNG is {image.mode}; send a greyscale one (8 or 16 bits): a "
                    "colour map's values are not defined"
                )
            image.load()
            return np.asarray(image, dtype=np.float64)
    except Image.DecompressionBombError as exc:  # Pillow's own bound, far above ours
        raise TooManyPixels(
            f"the map claims more than {MAX_MAP_PIXELS} pixels: {exc}; send it at the model "
            "input's size or the JSON grid's"
        ) from exc
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as exc:
        raise BadMap(f"the map PNG cannot be read: {exception_text(exc)}") from exc
