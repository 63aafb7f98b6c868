"""A face and its crop for the model: the detected face, the aligned crop and the way back.

A face is cropped by the similarity transform (rotation, uniform scale, shift) that best maps
its landmarks onto the bundle's template (``similarity_transform``); ``AlignedFace.to_image``
lays anything computed on the crop (a heatmap) back onto the upload through the same matrix.
An upload that already is a face crop is taken whole (``whole_image``), cut to the bundle's
framing box.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import numpy as np
from PIL import Image

from service.bundle.framing import Framing, frame
from service.bundle.preprocess import Box


@dataclass(frozen=True)
class Face:
    """A detected face: its box (clipped to the image), the detector's score (SVM margin; higher
    is surer) and its 5 landmarks ``(5, 2)`` as x, y in image pixels. ``source``: ``detector``
    for a face found in the photo, ``face_crop`` when the upload itself was taken as a face crop
    (then ``score`` is the CNN detector's margin, 0 its cut-off too)."""

    box: Box
    score: float
    landmarks: np.ndarray
    source: Literal["detector", "face_crop"] = "detector"

    def clipped_to(self, image: Image.Image) -> Face:
        """This face with its box cut to ``image``'s bounds (a face touching the border is
        found on padding, so its box may reach past the image)."""
        box = self.box
        x0, y0 = max(0, box.x), max(0, box.y)
        x1, y1 = min(image.width, box.x + box.width), min(image.height, box.y + box.height)
        clipped = Box(x0, y0, max(1, x1 - x0), max(1, y1 - y0))
        return Face(clipped, self.score, self.landmarks, self.source)


@dataclass(frozen=True)
class AlignedFace:
    """A face cropped for the model. ``matrix`` (2x3) maps image pixels to crop pixels."""

    crop: Image.Image
    matrix: np.ndarray
    face: Face | None

    def to_image(self, values: np.ndarray, size: tuple[int, int]) -> np.ndarray:
        """Lay a map over the crop (``(h, w)`` float, any resolution) back onto the image of
        ``size`` = (width, height): ``(height, width)`` float32, 0 outside the crop."""
        crop_w, crop_h = self.crop.size
        layer = Image.fromarray(np.asarray(values, dtype=np.float32), mode="F")
        if layer.size != (crop_w, crop_h):
            layer = layer.resize((crop_w, crop_h), Image.Resampling.BILINEAR)
        coefficients = tuple(self.matrix.ravel())  # image pixel -> crop pixel, as PIL wants
        back = layer.transform(
            size, Image.Transform.AFFINE, coefficients, Image.Resampling.BILINEAR, fillcolor=0
        )
        return np.asarray(back, dtype=np.float32)

    def from_image(self, values: np.ndarray, factor: float = 1.0) -> np.ndarray:
        """``to_image``'s inverse: a map over the image (``(h, w)`` float, on the image's pixels
        times ``factor``) as it falls on the crop, ``(crop height, crop width)`` float32,
        bilinear. Crop pixels beyond the map (a crop reaching past the image's edge) get the
        map's smallest value: least important."""
        to_crop = self.matrix * np.array([[1 / factor, 1 / factor, 1.0]])
        inverse = np.linalg.inv(np.vstack([to_crop, [0.0, 0.0, 1.0]]))[:2]  # crop -> map pixel
        values = np.asarray(values, dtype=np.float32)
        layer = Image.fromarray(values, mode="F")
        fill = float(values.min()) if values.size else 0.0
        on_crop = layer.transform(
            self.crop.size,
            Image.Transform.AFFINE,
            tuple(inverse.ravel()),
            Image.Resampling.BILINEAR,
            fillcolor=fill,
        )
        return np.asarray(on_crop, dtype=np.float32)


# An upload classified whole is cut to the framing box at most this large (then preprocessed to
# the model's input, 150x150): a 10-megapixel upload is not copied at full size to be framed.
WHOLE_IMAGE_MAX_SIDE = 600


def whole_image(image: Image.Image, framing: Framing | None = None) -> AlignedFace:
    """The image itself as the crop (for uploads that already are face crops), cut to the
    bundle's ``framing`` box when it has one."""
    if framing is None:
        return AlignedFace(image, np.array([[1.0, 0, 0], [0, 1.0, 0]]), None)
    crop, matrix = frame(image, framing, WHOLE_IMAGE_MAX_SIDE)
    return AlignedFace(crop, matrix, None)


def similarity_transform(source: np.ndarray, target: np.ndarray) -> np.ndarray:
    """Least-squares rotation + uniform scale + shift mapping ``source`` (N, 2) onto ``target``
    (N, 2) (Umeyama, 1991); returns the 2x3 matrix.

    In the plane, with the centred points as complex numbers ``x`` and ``y``, a rotation with a
    scale is one complex factor ``a``, and the least-squares one is ``<x, y> / <x, x>``:
    Umeyama's solution in closed form, without his SVD (a fifth of the time, the same matrix to
    1e-13)."""
    src_mean, dst_mean = source.mean(0), target.mean(0)
    as_complex = np.array([1.0, 1.0j])
    x, y = (source - src_mean) @ as_complex, (target - dst_mean) @ as_complex
    a = np.vdot(x, y) / np.vdot(x, x).real
    scaled_rotation = np.array([[a.real, -a.imag], [a.imag, a.real]])
    shift = dst_mean - scaled_rotation @ src_mean
    return np.hstack([scaled_rotation, shift[:, None]])
