"""Faces in photos: find them, and crop each the way the training crops were framed.

Detection is dlib's HOG frontal-face detector and alignment dlib's 5-point landmark model (outer
and inner corner of each eye, base of the nose), both from the ``dlib-bin`` wheel and the
``face-recognition-models`` package: they install from PyPI with their weights, run in ~10 ms
on a 250x250 photo on one core, and dlib's landmarks are what the face network was built
around. The bundle's ``meta.json["face_alignment"]`` records where those landmarks sit, on
average, in the training crops; a face is cropped by the similarity transform (rotation, uniform
scale, shift) that best maps its landmarks onto that template, so the model sees the framing it
was trained on.

Which face: every detected face is returned, preferred first -- the largest, discounted by its
distance from the image centre (``preference``). When no face is found the photo is padded by a
quarter of its size on every side and searched again at twice the resolution with a lower
threshold, which catches tight face crops whose face touches the border.
"""
from __future__ import annotations

import importlib.util
import logging
import queue
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image
from pydantic import BaseModel, ConfigDict, Field

from .errors import FaceNotFound, NoFace
from .preprocess import Box

log = logging.getLogger(__name__)

LANDMARKS_FILE = "shape_predictor_5_face_landmarks.dat"
# Photos are searched at most this large (longest side, pixels); HOG time grows with the area.
DETECTION_MAX_SIDE = 800
RETRY_PADDING = 0.25
# The retry also accepts slightly less face-like windows (dlib's adjust_threshold): on tight
# training crops it finds half of the faces the first pass missed, on background patches of
# photos it adds ~3% false detections, which the open-set decision then treats as strangers.
RETRY_THRESHOLD = -0.5


class AlignmentSpec(BaseModel):
    """``meta.json["face_alignment"]``: the landmark template and the crop size."""

    model_config = ConfigDict(extra="allow", frozen=True)

    detector: str = "dlib-hog-frontal"
    landmarks: str = "dlib-5-point"
    points: list[tuple[float, float]] = Field(min_length=5, max_length=5)
    width: int = Field(gt=0)
    height: int = Field(gt=0)


@dataclass(frozen=True)
class Face:
    """A detected face: its box (clipped to the image), the detector's score (SVM margin; higher
    is surer) and its 5 landmarks ``(5, 2)`` as x, y in image pixels."""

    box: Box
    score: float
    landmarks: np.ndarray


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
        back = layer.transform(size, Image.Transform.AFFINE, coefficients, Image.Resampling.BILINEAR, fillcolor=0)
        return np.asarray(back, dtype=np.float32)


def whole_image(image: Image.Image) -> AlignedFace:
    """The image itself as the crop (for uploads that already are aligned face crops)."""
    return AlignedFace(image, np.array([[1.0, 0, 0], [0, 1.0, 0]]), None)


def similarity_transform(source: np.ndarray, target: np.ndarray) -> np.ndarray:
    """Least-squares rotation + uniform scale + shift mapping ``source`` (N, 2) onto ``target``
    (N, 2) (Umeyama, 1991); returns the 2x3 matrix."""
    src_mean, dst_mean = source.mean(0), target.mean(0)
    src, dst = source - src_mean, target - dst_mean
    u, s, vt = np.linalg.svd(dst.T @ src / len(source))
    d = np.ones(2)
    if np.linalg.det(u) * np.linalg.det(vt) < 0:
        d[-1] = -1
    rotation = u @ np.diag(d) @ vt
    scale = (s * d).sum() / src.var(0).sum()
    shift = dst_mean - scale * rotation @ src_mean
    return np.hstack([scale * rotation, shift[:, None]])


def preference(box: Box, width: int, height: int) -> float:
    """Larger is preferred: the box's area, reduced by up to half as its centre moves from the
    image centre to a corner."""
    cx, cy = box.x + box.width / 2 - width / 2, box.y + box.height / 2 - height / 2
    off_centre = np.hypot(cx, cy) / np.hypot(width / 2, height / 2)
    return box.width * box.height * (1 - 0.5 * min(off_centre, 1.0))


def face_models_file(name: str) -> Path:
    """A model file shipped in the ``face-recognition-models`` package (dlib's .dat files).

    The package's ``__init__`` imports ``pkg_resources`` (gone from new setuptools), so the file
    is located through the import system without importing the package.
    """
    spec = importlib.util.find_spec("face_recognition_models")
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError(f"dlib's {name} is missing: pip install face-recognition-models==0.3.0")
    return Path(next(iter(spec.submodule_search_locations))) / "models" / name


def landmarks_model_path() -> Path:
    return face_models_file(LANDMARKS_FILE)


class FaceFinder:
    """Detects and aligns faces per an ``AlignmentSpec``. Safe to call from several threads: it
    keeps a pool of ``workers`` dlib detector + landmark model pairs, built up front (about half
    a second each), and a call waits for a free pair."""

    def __init__(self, spec: AlignmentSpec, workers: int = 2) -> None:
        import dlib  # imported here: only bundles with face alignment need it

        self.spec = spec
        self._dlib = dlib
        self._template = np.asarray(spec.points, dtype=np.float64) * [spec.width, spec.height]
        predictor_path = str(landmarks_model_path())
        self._pool: queue.SimpleQueue = queue.SimpleQueue()
        for _ in range(max(1, workers)):
            self._pool.put((dlib.get_frontal_face_detector(), dlib.shape_predictor(predictor_path)))

    @contextmanager
    def _models(self) -> Iterator[tuple[object, object]]:
        models = self._pool.get()
        try:
            yield models
        finally:
            self._pool.put(models)

    def detect(self, image: Image.Image) -> list[Face]:
        """Every face in ``image`` (RGB), preferred first (see ``preference``)."""
        faces = self._search(image, upsample=0, pad=0, threshold=0.0)
        if not faces:
            pad = round(RETRY_PADDING * max(image.size))
            faces = self._search(image, upsample=1, pad=pad, threshold=RETRY_THRESHOLD)
        return sorted(faces, key=lambda f: -preference(f.box, image.width, image.height))

    def _search(self, image: Image.Image, upsample: int, pad: int, threshold: float) -> list[Face]:
        scale = min(1.0, DETECTION_MAX_SIDE / max(image.size))
        small = image if scale == 1.0 else image.resize(
            (round(image.width * scale), round(image.height * scale)), Image.Resampling.BILINEAR)
        pixels = np.asarray(small)
        full = np.asarray(image)
        if pad:
            pixels = np.pad(pixels, ((pad, pad), (pad, pad), (0, 0)), mode="edge")
            full = pixels
        faces = []
        with self._models() as (detector, predictor):
            rects, scores, _ = detector.run(pixels, upsample, threshold)
            for rect, score in zip(rects, scores):
                left, top, right, bottom = (v / scale for v in (rect.left(), rect.top(), rect.right(), rect.bottom()))
                shape = predictor(full, self._dlib.rectangle(round(left), round(top), round(right), round(bottom)))
                points = np.array([[p.x, p.y] for p in shape.parts()], float) - pad
                faces.append(Face(_clipped(left - pad, top - pad, right - pad, bottom - pad, image), float(score), points))
        return faces

    def align(self, image: Image.Image, face: Face) -> AlignedFace:
        """Crop ``face`` from ``image`` to the template's framing and size."""
        matrix = similarity_transform(face.landmarks, self._template)
        inverse = np.linalg.inv(np.vstack([matrix, [0, 0, 1]]))[:2]  # crop pixel -> image pixel
        crop = image.transform(
            (self.spec.width, self.spec.height), Image.Transform.AFFINE, tuple(inverse.ravel()),
            Image.Resampling.BILINEAR,
        )
        return AlignedFace(crop, matrix, face)


def _clipped(left: float, top: float, right: float, bottom: float, image: Image.Image) -> Box:
    x0, y0 = max(0, round(left)), max(0, round(top))
    x1, y1 = min(image.width, round(right) + 1), min(image.height, round(bottom) + 1)
    return Box(x0, y0, max(1, x1 - x0), max(1, y1 - y0))


@dataclass(frozen=True)
class FaceChoice:
    """The region a request classifies and explains: ``aligned`` (the model's view), every face
    found (``faces``, preferred first) and which one was used (``index``; None = whole image)."""

    aligned: AlignedFace
    faces: list[Face]
    index: int | None
    detect_ms: float

    @property
    def box(self) -> Box:
        face = self.aligned.face
        return face.box if face is not None else Box.whole(self.aligned.crop)


def choose_face(finder: FaceFinder | None, image: Image.Image, *, detect: bool, index: int | None) -> FaceChoice:
    """Detect faces and align the chosen one (``index`` into the preferred-first list; default
    the first). ``detect=False``, or a bundle without face alignment, uses the whole image.

    Raises ``NoFace`` when detection finds nothing and ``FaceNotFound`` for an index past the
    faces found.
    """
    if finder is None or not detect:
        return FaceChoice(whole_image(image), [], None, 0.0)
    started = time.perf_counter()
    faces = finder.detect(image)
    if not faces:
        raise NoFace(
            "no face found in the image (the detector looks for frontal faces about 40 pixels or "
            "more across); send a larger or more frontal photo, or pass detect=false if the image "
            "already is a tight face crop"
        )
    chosen = 0 if index is None else index
    if chosen >= len(faces):
        raise FaceNotFound(f"face={index} asked for, but {len(faces)} face(s) were found (indices 0..{len(faces) - 1})")
    aligned = finder.align(image, faces[chosen])
    return FaceChoice(aligned, faces, chosen, (time.perf_counter() - started) * 1000)
