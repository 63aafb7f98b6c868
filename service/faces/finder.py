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
quarter of its shorter side on every side and searched again, enlarged up to twice the first
pass's resolution, with a lower threshold: that catches tight face crops whose face touches the
border.

What HOG cannot settle gets a second look by dlib's CNN face detector (``second_look``): a face
that only the retry's lower threshold accepts, and scores below ``second_look.SURE_SCORE``, is
kept only when the CNN finds it too (coins and coffee cups give such "faces"); and when HOG finds
nothing in an upload shaped like a face crop, the CNN searches it whole: a face filling it makes
the upload a face crop (``Face.source`` = ``face_crop``), aligned and classified like any face.

What a request costs is bounded by the pixels searched, not by the upload: each pass searches a
``SearchView`` -- the upload resized, then padded -- of at most ``SEARCH_MAX_PIXELS`` pixels
(HOG time grows with the area), so two passes search at most twice that, whatever the upload's
size or shape (a blank 20000x16 PNG searches 800x1, then 1600x1 pixels); a second look adds
views of at most ``second_look.LOOK_MAX_PIXELS`` pixels each, and only while the total stays
within two passes. Nothing else bounds it: no clock, no CPU time, no wait for a detector decides
whether a pass or a view runs, so the same pixels give the same faces under any load. A detector
is held for the search itself only, never while an image is resized; large passes take turns
(``FaceFinder``), so that they leave a detector and a core to small ones. Boxes and landmarks
are found on the searched pixels and mapped back onto the upload by that view's one transform
(``SearchView.to_image``).

One search per photo: ``FaceFinder.detect`` keeps its results by a digest of the pixels
(``search_cache``), so the explanation panels that follow a ``/predict`` of the same photo, at
once or later, reuse its search instead of repeating it.
"""

from __future__ import annotations

import queue
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass
from typing import Any

import numpy as np
import numpy.typing as npt
from PIL import Image

from service.bundle.alignment import AlignmentSpec
from service.bundle.framing import warp
from service.bundle.preprocess import Box
from service.faces.aligned import AlignedFace, Face, similarity_transform
from service.faces.model_files import face_models_file, landmarks_model_path
from service.faces.search_cache import FaceSearchCache
from service.faces.second_look import (
    CNN_FILE,
    MAX_LOOKS,
    SURE_SCORE,
    Region,
    agrees,
    candidate_view,
    crop_views,
    fills_crop,
    is_crop_shaped,
)
from service.observability.metrics import FaceSearchMetrics, FaceSearchSize

# The first pass searches the upload at most this large (longest side, pixels).
DETECTION_MAX_SIDE = 800
# Every pass searches at most this many pixels, padding and enlargement included: dlib's HOG
# takes ~0.25 us a pixel here (image pyramid included), so ~0.15 s of one core per pass.
SEARCH_MAX_PIXELS = 640_000
# A pass over more pixels than this (upload or view; 400x400) is "large": such passes take
# turns, so that they never hold every detector and core.
SMALL_SEARCH_PIXELS = 160_000
# The retry pads by this fraction of the shorter side (the face of a tight crop is about as
# large as it; the longer side of a 20000x16 strip would pad it with millions of blank pixels)
# and enlarges up to this factor over the first pass, so that faces down to ~40 px are found.
RETRY_PADDING = 0.25
RETRY_MAX_ENLARGEMENT = 2.0
# The retry also accepts slightly less face-like windows (dlib's adjust_threshold): on tight
# training crops it finds half of the faces the first pass missed, on background patches of
# photos it adds ~3% false detections, which the open-set decision then treats as strangers.
RETRY_THRESHOLD = -0.5


def preference(box: Box, width: int, height: int) -> float:
    """Larger is preferred: the box's area, reduced by up to half as its centre moves from the
    image centre to a corner."""
    cx, cy = box.x + box.width / 2 - width / 2, box.y + box.height / 2 - height / 2
    off_centre = np.hypot(cx, cy) / np.hypot(width / 2, height / 2)
    return box.width * box.height * (1 - 0.5 * min(off_centre, 1.0))


@dataclass(frozen=True)
class SearchView:
    """The pixels one detection pass searches: the upload resized to ``scale`` (per axis, as the
    rounded size came out), then padded by ``pad`` pixels on every side, edge pixels repeated.

    Coordinates are continuous, pixel ``i`` spanning ``[i, i + 1)``; a point ``u`` of the
    upload lies at ``u * scale + pad`` here, the one transform ``to_image`` undoes.
    """

    pixels: np.ndarray  # (H, W, 3) uint8
    scale: tuple[float, float]  # (x, y): searched pixels per upload pixel, before padding
    pad: int

    @classmethod
    def of(cls, image: Image.Image, scale: float, padding: float = 0.0) -> SearchView:
        """``image`` resized by ``scale`` (at least 1x1), padded by ``padding`` times the resized
        image's shorter side."""
        width, height, pad = _view_size(image.size, scale, padding)
        resized = (
            image
            if (width, height) == image.size
            else image.resize((width, height), Image.Resampling.BILINEAR)
        )
        pixels = np.asarray(resized)
        if pad:
            pixels = np.pad(pixels, ((pad, pad), (pad, pad), (0, 0)), mode="edge")
        return cls(pixels, (width / image.width, height / image.height), pad)

    @property
    def area(self) -> int:
        return self.pixels.shape[0] * self.pixels.shape[1]

    def to_image(self, points: npt.ArrayLike) -> np.ndarray:
        """Continuous ``(N, 2)`` x, y here -> the same places on the upload."""
        return (np.asarray(points, dtype=np.float64) - self.pad) / np.asarray(self.scale)


def _view_size(size: tuple[int, int], scale: float, padding: float) -> tuple[int, int, int]:
    """Width and height of ``size`` resized by ``scale``, and the padding of its view."""
    width, height = max(1, round(size[0] * scale)), max(1, round(size[1] * scale))
    return width, height, round(padding * min(width, height))


def view_area(size: tuple[int, int], scale: float, padding: float = 0.0) -> int:
    """``SearchView.of(image of size, scale, padding).area``, without making it."""
    width, height, pad = _view_size(size, scale, padding)
    return (width + 2 * pad) * (height + 2 * pad)


def first_pass_scale(width: int, height: int) -> float:
    """The first pass's scale: the upload as is, or shrunk to ``DETECTION_MAX_SIDE`` and
    ``SEARCH_MAX_PIXELS``."""
    return min(1.0, DETECTION_MAX_SIDE / max(width, height), _area_scale(width, height, 0.0))


def retry_scale(width: int, height: int) -> float:
    """The retry's scale: up to ``RETRY_MAX_ENLARGEMENT`` times the first pass's, as long as the
    padded view stays within ``SEARCH_MAX_PIXELS``."""
    return min(
        RETRY_MAX_ENLARGEMENT * first_pass_scale(width, height),
        _area_scale(width, height, RETRY_PADDING),
    )


def _area_scale(width: int, height: int, padding: float) -> float:
    """The largest scale whose view (``padding`` times the shorter side on every side) has at
    most ``SEARCH_MAX_PIXELS`` pixels, less a margin for the rounding of its sides."""
    grow = 2 * padding * min(width, height)
    area = (width + grow) * (height + grow)
    return (SEARCH_MAX_PIXELS / area) ** 0.5 * 0.995


class FaceFinder:
    """Detects and aligns faces per an ``AlignmentSpec``. Safe to call from several threads: it
    keeps a pool of ``workers`` dlib HOG detector + landmark model + CNN detector triples, built
    up front (about half a second each), and a search waits for a free one. Passes over more than
    ``SMALL_SEARCH_PIXELS`` (large uploads, retries on photos) take turns, at most
    ``workers - 1`` at once (at least one), resizing included: a stream of them leaves a set of
    models, and a core, to face crops and small photos. The results of the last
    ``cache_entries`` photos searched are kept (0: none kept, every call searches)."""

    def __init__(self, spec: AlignmentSpec, workers: int = 2, cache_entries: int = 0) -> None:
        import dlib  # imported here: only bundles with face alignment need it

        self.spec = spec
        self._dlib = dlib
        self._template = np.asarray(spec.points, dtype=np.float64) * [spec.width, spec.height]
        self.cache = FaceSearchCache(cache_entries)
        self.metrics = FaceSearchMetrics()
        self.metrics.cache_size = lambda: FaceSearchSize(
            self.cache.entries, self.cache.max_entries, self.cache.bytes, self.cache.max_bytes
        )
        predictor_path = str(landmarks_model_path())
        cnn_path = str(face_models_file(CNN_FILE))
        self._pool: queue.SimpleQueue = queue.SimpleQueue()
        for _ in range(max(1, workers)):
            self._pool.put(
                (
                    dlib.get_frontal_face_detector(),
                    dlib.shape_predictor(predictor_path),
                    dlib.cnn_face_detection_model_v1(cnn_path),
                )
            )
        self._large_turns = threading.BoundedSemaphore(max(1, workers - 1))

    @contextmanager
    def _models(self) -> Iterator[tuple[Any, Any, Any]]:
        """A HOG detector, landmark model and CNN detector (dlib's, untyped), once free."""
        models = self._pool.get()
        try:
            yield models
        finally:
            self._pool.put(models)

    def detect(self, image: Image.Image) -> list[Face]:
        """Every face in ``image`` (RGB), preferred first (see ``preference``): the cached
        search of the same pixels, or a new one (``search``). Counted in ``self.metrics``: the
        seconds (a wait for the same pixels' search included) and the pixels searched (0 for a
        result had from the cache)."""
        started = time.perf_counter()
        searched = 0

        def search() -> list[Face]:
            nonlocal searched
            faces, searched = self.search(image)
            return faces

        faces, lookup = self.cache.search(image, search)
        self.metrics.observe(searched, time.perf_counter() - started, lookup)
        return faces

    def search(self, image: Image.Image) -> tuple[list[Face], int]:
        """Every face in ``image`` (RGB), preferred first, and the pixels searched: at most two
        passes of at most ``SEARCH_MAX_PIXELS`` each, then, when they found no sure face, second
        looks within the same total. Bounded by pixels and views only, so the same pixels
        always give the same faces."""
        faces, searched = self._search(image, first_pass_scale(*image.size), 0.0, threshold=0.0)
        if not faces:
            faces, retried = self._search(
                image, retry_scale(*image.size), RETRY_PADDING, threshold=RETRY_THRESHOLD
            )
            searched += retried
            if not any(face.score >= SURE_SCORE for face in faces):
                faces, looked = self._second_look(image, faces, searched)
                searched += looked
        ordered = sorted(
            (face.clipped_to(image) for face in faces),
            key=lambda f: -preference(f.box, image.width, image.height),
        )
        return ordered, searched

    def _second_look(
        self, image: Image.Image, weak: list[Face], searched: int
    ) -> tuple[list[Face], int]:
        """The faces among ``weak`` (retry faces, none sure) that the CNN detector finds too, the
        preferred ``MAX_LOOKS`` of them; if none, the upload as a face crop when it is shaped like
        one and the CNN finds a face filling it; and the pixels viewed. A look is skipped when it
        would take the search past two passes' pixels (``searched``: those of the passes)."""
        size = image.size
        candidates = sorted(weak, key=lambda f: -preference(f.box, *size))[:MAX_LOOKS]
        regions = [candidate_view(face.clipped_to(image).box, *size) for face in candidates]
        if is_crop_shaped(*size):
            regions += crop_views(*size)
        viewed = 0
        for index, region in enumerate(regions):
            area = view_area((region.box.width, region.box.height), region.scale, region.padding)
            if searched + viewed + area > 2 * SEARCH_MAX_PIXELS:
                break
            found, seen = self._cnn_faces(image, region)
            viewed += seen
            if index < len(candidates):
                if any(agrees(candidates[index].clipped_to(image).box, f.box) for f in found):
                    return [candidates[index]], viewed
            else:
                crops = [f for f in found if fills_crop(f.box, *size)]
                if crops:
                    return [max(crops, key=lambda f: f.score)], viewed
        return [], viewed

    def _cnn_faces(self, image: Image.Image, region: Region) -> tuple[list[Face], int]:
        """The CNN detector's faces in ``region``'s view, with landmarks, in the upload's
        coordinates (``source`` = ``face_crop``), and the pixels viewed."""
        view = SearchView.of(region.cut(image), region.scale, region.padding)
        offset = np.array([region.box.x, region.box.y], np.float64)
        with self._models() as (_, predictor, cnn):
            found = []
            for detection in cnn(view.pixels, 0):
                rect = detection.rect
                shape = predictor(view.pixels, rect)
                found.append((rect, detection.confidence, [(p.x, p.y) for p in shape.parts()]))
        faces = []
        for rect, score, parts in found:
            corners = view.to_image(
                [[rect.left(), rect.top()], [rect.right() + 1, rect.bottom() + 1]]
            )
            landmarks = view.to_image(np.asarray(parts, np.float64) + 0.5) - 0.5
            faces.append(
                Face(_unclipped(corners + offset), float(score), landmarks + offset, "face_crop")
            )
        return faces, view.area

    def _search(
        self,
        image: Image.Image,
        scale: float,
        padding: float,
        threshold: float,
    ) -> tuple[list[Face], int]:
        """One pass: faces in ``image``'s view at ``scale`` and ``padding``, with landmarks, in
        the upload's coordinates (boxes not yet clipped to it), and the pixels searched. A large
        pass (upload or view over ``SMALL_SEARCH_PIXELS``) first waits for a large turn, then
        makes its view and searches it; a detector is held for the search only."""
        pixels = max(image.width * image.height, view_area(image.size, scale, padding))
        large = pixels > SMALL_SEARCH_PIXELS
        found = []
        with self._large_turns if large else nullcontext():
            view = SearchView.of(image, scale, padding)
            with self._models() as (detector, predictor, _):
                rects, scores, _ = detector.run(view.pixels, 0, threshold)
                for rect, score in zip(rects, scores, strict=True):
                    shape = predictor(view.pixels, rect)
                    found.append((rect, score, [(p.x, p.y) for p in shape.parts()]))
        faces = []
        for rect, score, parts in found:
            # a rect spans pixels left..right inclusive; a landmark is a pixel's centre
            corners = view.to_image(
                [[rect.left(), rect.top()], [rect.right() + 1, rect.bottom() + 1]]
            )
            landmarks = view.to_image(np.asarray(parts, np.float64) + 0.5) - 0.5
            faces.append(Face(_unclipped(corners), float(score), landmarks))
        return faces, view.area

    def align(self, image: Image.Image, face: Face) -> AlignedFace:
        """Crop ``face`` from ``image`` to the template's framing and size."""
        matrix = similarity_transform(face.landmarks, self._template)
        crop = warp(image, matrix, (self.spec.width, self.spec.height))
        return AlignedFace(crop, matrix, face)


def _unclipped(corners: np.ndarray) -> Box:
    """The box with continuous corners ``[[x0, y0], [x1, y1]]``, rounded to whole pixels."""
    (x0, y0), (x1, y1) = np.rint(corners).astype(int).tolist()
    return Box(x0, y0, max(1, x1 - x0), max(1, y1 - y0))
