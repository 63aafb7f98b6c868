"""The result of every explanation method, and how it maps onto the uploaded image.

A ``Heatmap`` is computed in model-input coordinates: one value per pixel of the
``(H, W)`` image the model saw (after crop and resize). ``place`` is the one primitive that
takes it back to a picture: resize it into a box ``(x0, y0, x1, y1)`` of an image of size
``(width, height)``; the default box is the whole image, which is the uploaded image when no
face detector chose a sub-rectangle.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np
from PIL import Image

from ..model import softmax

BoxCorners = tuple[int, int, int, int]
"""``(x0, y0, x1, y1)`` in pixels, x1/y1 exclusive"""

NEGLIGIBLE_SCALE = 1e-4
"""A map whose largest raw magnitude is below this holds no evidence.

Every method's units are the target's score -- a logit or a probability (occlusion, LIME,
integrated gradients, Grad-CAM) or its change per unit of model input, which spans about 1 (the
gradients) -- so one threshold serves all. 1e-4 is the tolerance the bundle's load check allows
between the ONNX model and its twin on the same input (``parity_tolerance``): differences below
it are what the service already accepts as "the same model", rounding noise. Measured with the
default bundle: on a flat black or white image, integrated gradients, occlusion and LIME with
the image's own mean colour as baseline reach 3e-8 to 7e-7 (0 with the blur baseline); on 12
real test faces every method at its defaults is above 2.8e-2. The threshold sits 2 orders of
magnitude from each.
"""


@dataclass(frozen=True)
class Heatmap:
    """One explanation of one image for one class.

    ``values`` is ``(H, W)`` float32 in model-input coordinates, read-only. Its convention:

    - ``signed=False``: values in ``value_range`` (``(0, 1)``), larger = more important.
    - ``signed=True``: values in ``value_range`` (``(-1, 1)``); positive = evidence *for*
      ``target`` (removing it lowers the class score), negative = evidence against it.

    Every method divides its raw values by their largest magnitude ``scale``:
    ``values * scale`` are in ``units`` (e.g. "drop of the target probability") -- unless the
    map is ``negligible`` (``scale < NEGLIGIBLE_SCALE``): then ``values`` are the raw values,
    all about 0, because stretching numerical noise to full strength would show a confident
    map where there is no evidence (``scaled`` decides).
    ``logits`` are the model's logits for the unperturbed input, ``(C,)`` float32.
    """

    values: np.ndarray
    method: str
    target: int
    signed: bool
    value_range: tuple[float, float]
    units: str
    scale: float
    logits: np.ndarray
    params: dict[str, Any] = field(default_factory=dict)
    negligible: bool = False

    def __post_init__(self) -> None:
        if self.values.ndim != 2:
            raise ValueError(f"heatmap values must be (H, W), got shape {self.values.shape}")
        values = np.ascontiguousarray(self.values, dtype=np.float32)
        values.setflags(write=False)  # heatmaps are shared through the cache
        object.__setattr__(self, "values", values)

    @property
    def shape(self) -> tuple[int, int]:
        return self.values.shape  # type: ignore[return-value]

    @property
    def probabilities(self) -> np.ndarray:
        """``(C,)`` float64 softmax of ``logits``."""
        return softmax(self.logits)

    @property
    def predicted(self) -> int:
        return int(np.argmax(self.logits))

    def place(self, image_size: tuple[int, int], box: BoxCorners | None = None) -> np.ndarray:
        """The values in the coordinates of an image of ``image_size`` = ``(width, height)``.

        Resized (bilinear) into ``box`` (default: the whole image); zero outside it. Returns
        ``(height, width)`` float32.
        """
        return place_in_box(self.values, image_size, box)


def scaled(raw: np.ndarray, value_range: tuple[float, float]) -> tuple[np.ndarray, float, bool]:
    """``raw`` ``(H, W)`` divided by its largest magnitude and clipped to ``value_range``, that
    magnitude (``scale``), and whether the map is negligible: then the values are ``raw``
    itself (clipped), not stretched."""
    scale = float(np.max(np.abs(raw)))
    negligible = scale < NEGLIGIBLE_SCALE
    values = raw if negligible else raw / scale
    return np.clip(values, *value_range), scale, negligible  # unsigned: cuts rounding below 0


def place_in_box(
    values: np.ndarray, image_size: tuple[int, int], box: BoxCorners | None = None
) -> np.ndarray:
    """``values`` ``(h, w)`` resized into ``box`` of a zero ``(height, width)`` float32 canvas.

    ``image_size`` is ``(width, height)``; ``box`` is ``(x0, y0, x1, y1)`` with x1/y1 exclusive,
    and may reach outside the image (a face near the border): the part outside is cut off.
    """
    width, height = image_size
    if width < 1 or height < 1:
        raise ValueError(f"image size must be positive, got {image_size}")
    x0, y0, x1, y1 = box if box is not None else (0, 0, width, height)
    if x1 <= x0 or y1 <= y0:
        raise ValueError(f"empty box {box}")
    resized = np.asarray(values, dtype=np.float32)
    if resized.shape != (y1 - y0, x1 - x0):
        resized = np.asarray(
            Image.fromarray(resized).resize((x1 - x0, y1 - y0), Image.Resampling.BILINEAR)
        )
    canvas = np.zeros((height, width), dtype=np.float32)
    # Clip the box to the canvas, and the resized map by the same amounts.
    cx0, cy0, cx1, cy1 = max(x0, 0), max(y0, 0), min(x1, width), min(y1, height)
    if cx1 > cx0 and cy1 > cy0:
        canvas[cy0:cy1, cx0:cx1] = resized[cy0 - y0 : cy1 - y0, cx0 - x0 : cx1 - x0]
    return canvas
