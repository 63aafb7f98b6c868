"""How much of a face the model sees: warping a crop out of an image, and a bundle's framing.

A pretrained face network was trained on faces framed one way (dlib's network: the 150x150
chips of ``dlib.get_face_chip_details(landmarks, 150, padding=0.25)``); face crops in a data set
are often framed another (tighter, higher). A bundle may record ``input.framing``: the box of a
face crop, as fractions of its width and height ``(left, top, right, bottom)``, that the model
was trained on; it may reach past the crop's edges. Training cuts that box out of every crop
(``frame``), the service cuts it out of an upload that is itself a crop (``detect=false``), and
a face found in a photo is aligned to a landmark template already expressed in that box
(``template_in_frame``), so the model sees the same framing on every path.

Pixels a crop needs from beyond the image are the image's edge pixels repeated (``warp``), on
every path: a face at a photo's border and a face crop's chin strip look alike to the model.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from PIL import Image

Framing = tuple[float, float, float, float]


def warp(image: Image.Image, matrix: np.ndarray, size: tuple[int, int]) -> Image.Image:
    """The crop of ``size`` (width, height) that ``matrix`` (2x3, image pixel -> crop pixel)
    maps the image onto (bilinear), edge pixels repeated beyond the image. Only the image region
    under the crop is read and padded."""
    inverse = np.linalg.inv(np.vstack([matrix, [0, 0, 1]]))[:2]  # crop pixel -> image pixel
    width, height = size
    corners = np.array([[0, 0, 1], [width, 0, 1], [0, height, 1], [width, height, 1]], float)
    mapped = corners @ inverse.T
    x0, y0 = np.floor(mapped.min(0)).astype(int) - 2
    x1, y1 = np.ceil(mapped.max(0)).astype(int) + 2
    # the image pixels under the crop (at least one; only those are copied), and the region
    # they are padded to
    xs, ys = min(max(x0, 0), image.width - 1), min(max(y0, 0), image.height - 1)
    xe, ye = max(min(x1, image.width), xs + 1), max(min(y1, image.height), ys + 1)
    ox, oy = min(x0, xs), min(y0, ys)
    inside = np.asarray(image.crop((xs, ys, xe, ye)))
    pad = ((ys - oy, max(y1, ye) - ye), (xs - ox, max(x1, xe) - xe)) + ((0, 0),) * (inside.ndim - 2)
    region = Image.fromarray(np.pad(inside, pad, mode="edge"), image.mode)
    shifted = inverse.copy()
    shifted[:, 2] -= (ox, oy)  # crop pixel -> region pixel
    return region.transform(
        size, Image.Transform.AFFINE, tuple(shifted.ravel()), Image.Resampling.BILINEAR
    )


def framing_matrix(box: Sequence[float], width: int, height: int) -> np.ndarray:
    """2x3, image pixel -> framed-crop pixel, for ``box`` (fractions) of a ``width x height``
    image framed at that same size."""
    left, top, right, bottom = box
    sx, sy = 1.0 / (right - left), 1.0 / (bottom - top)
    return np.array([[sx, 0.0, -left * width * sx], [0.0, sy, -top * height * sy]])


def frame(
    image: Image.Image, box: Sequence[float], max_side: int | None = None
) -> tuple[Image.Image, np.ndarray]:
    """``box`` of the face crop ``image``, at the image's own size (shrunk first, bilinearly,
    to at most ``max_side`` pixels a side), and the 2x3 matrix mapping image pixels to it."""
    scale = 1.0 if max_side is None else min(1.0, max_side / max(image.size))
    source = image
    if scale < 1:
        size = (max(1, round(image.width * scale)), max(1, round(image.height * scale)))
        source = image.resize(size, Image.Resampling.BILINEAR)
    matrix = framing_matrix(box, source.width, source.height)
    shrink = np.diag([source.width / image.width, source.height / image.height, 1.0])
    return warp(source, matrix, source.size), matrix @ shrink


def framed(image: Image.Image, box: Sequence[float] | None) -> Image.Image:
    """A face crop as the model sees it: ``box`` cut out of it (``frame``), or the crop itself
    where the bundle records no framing."""
    return image if box is None else frame(image, box)[0]


def template_in_frame(points: Sequence[Sequence[float]], box: Sequence[float]) -> list[list[float]]:
    """Landmark positions measured as fractions of a crop -> as fractions of its ``box``."""
    left, top, right, bottom = box
    return [
        [round((x - left) / (right - left), 5), round((y - top) / (bottom - top), 5)]
        for x, y in points
    ]
