"""One face search per photo: the faces found in an image, kept by a digest of its pixels.

The web page sends one photo to ``/predict`` and then to several explanation panels at once;
each request decodes the same pixels and would search them again (a tight crop that takes the
CNN's second look costs tenths of a second of CPU each time). The search is a pure function of
the decoded pixels (its work is bounded by pixels and views, never by a clock), so a result
keyed by a digest of the pixels, their size and mode is exact: the same pixels give the same
faces, cached or not.

``FaceSearchCache.search`` returns the cached faces, or waits for the one search of the same
pixels already in progress (single flight), or runs ``search`` itself and keeps its result.
An exception in a search is not kept: it reaches the caller that ran it and every caller that
waited for it, and the next caller searches again. Results are held as read-only arrays
(``FoundFaces``), bounded in entries and bytes by an ``LruCache``; 0 entries turns the cache
off (every call searches, nothing is shared: for benchmarks).
"""

from __future__ import annotations

import hashlib
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Literal, cast

import numpy as np
from PIL import Image

from service.bundle.preprocess import Box
from service.common.lru import LruCache
from service.faces.aligned import Face

# The digest reads the pixels in bands of about this many bytes, so that hashing a 40-megapixel
# upload never copies it whole.
DIGEST_BAND_BYTES = 1 << 20
# Bytes held at most, whatever the entry bound: a result is ~120 bytes a face.
MAX_BYTES = 4 * 1024 * 1024

Lookup = Literal["hit", "shared", "miss"]


def pixel_digest(image: Image.Image) -> str:
    """A digest of ``image``'s decoded pixels, size and mode: equal for equal pixels."""
    digest = hashlib.sha256()
    digest.update(f"{image.mode} {image.width}x{image.height}".encode())
    row_bytes = max(1, len(image.getbands()) * image.width)
    rows = max(1, DIGEST_BAND_BYTES // row_bytes)
    for top in range(0, image.height, rows):
        band = (0, top, image.width, min(image.height, top + rows))
        digest.update(image.crop(band).tobytes())
    return digest.hexdigest()


def _read_only(array: np.ndarray) -> np.ndarray:
    array.setflags(write=False)
    return array


@dataclass(frozen=True)
class FoundFaces:
    """A search's faces as read-only arrays: boxes ``(N, 4)`` x, y, width, height (int64),
    scores ``(N,)``, landmarks ``(N, 5, 2)``, and each face's source."""

    boxes: np.ndarray
    scores: np.ndarray
    landmarks: np.ndarray
    sources: tuple[str, ...]

    @classmethod
    def of(cls, faces: Sequence[Face]) -> FoundFaces:
        boxes = np.array([[f.box.x, f.box.y, f.box.width, f.box.height] for f in faces], np.int64)
        landmarks = np.array([np.asarray(f.landmarks, np.float64) for f in faces], np.float64)
        return cls(
            _read_only(boxes.reshape(len(faces), 4)),
            _read_only(np.array([f.score for f in faces], np.float64)),
            _read_only(landmarks.reshape(len(faces), 5, 2)),
            tuple(f.source for f in faces),
        )

    def faces(self) -> list[Face]:
        """The faces, in their order; each landmarks array a read-only view."""
        return [
            Face(
                Box(*(int(v) for v in box)),
                float(score),
                landmarks,
                cast(Literal["detector", "face_crop"], source),
            )
            for box, score, landmarks, source in zip(
                self.boxes, self.scores, self.landmarks, self.sources, strict=True
            )
        ]


class _Flight:
    """A search in progress: its waiters block on ``done`` and read its outcome."""

    def __init__(self) -> None:
        self.done = threading.Event()
        self.result: FoundFaces | None = None
        self.error: BaseException | None = None
        self.waiters = 0


class FaceSearchCache:
    """Face search results by ``pixel_digest``, at most ``max_entries`` (0 = off), least
    recently used evicted first; one search at a time per digest. Thread-safe."""

    def __init__(self, max_entries: int, max_bytes: int = MAX_BYTES) -> None:
        self._results = LruCache(max_entries, max_bytes)
        self._flights: dict[str, _Flight] = {}
        self._lock = threading.Lock()

    @property
    def enabled(self) -> bool:
        return self._results.max_entries > 0

    @property
    def max_entries(self) -> int:
        return self._results.max_entries

    @property
    def max_bytes(self) -> int:
        return self._results.max_bytes

    @property
    def entries(self) -> int:
        return len(self._results)

    @property
    def bytes(self) -> int:
        return self._results.bytes

    def search(
        self, image: Image.Image, search: Callable[[], list[Face]]
    ) -> tuple[list[Face], Lookup]:
        """The faces ``search()`` finds in ``image``, and how they were had: ``hit`` (kept),
        ``shared`` (waited for the same pixels' search in progress) or ``miss`` (searched here).
        The faces carry read-only landmarks when the cache is on."""
        if not self.enabled:
            return search(), "miss"
        key = pixel_digest(image)
        with self._lock:
            kept = self._results.get(key)
            flight = self._flights.get(key) if kept is None else None
            leader = kept is None and flight is None
            if leader:
                flight = self._flights[key] = _Flight()
            elif flight is not None:
                flight.waiters += 1
        if kept is not None:
            return cast(FoundFaces, kept).faces(), "hit"
        assert flight is not None
        if not leader:
            flight.done.wait()
            if flight.error is not None:
                raise flight.error
            assert flight.result is not None
            return flight.result.faces(), "shared"
        try:
            flight.result = FoundFaces.of(search())
            self._results.put(key, flight.result)
        except BaseException as exc:
            flight.error = exc
            raise
        finally:
            with self._lock:
                del self._flights[key]
            flight.done.set()
        return flight.result.faces(), "miss"
