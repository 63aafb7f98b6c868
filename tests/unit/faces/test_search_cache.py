"""The face search cache: exact keys, bounds, eviction, read-only results, single flight.

The searches here are stand-ins that count their calls (the finder's own search is checked in
test_same_answer.py); the keys are real images' pixels.
"""

from __future__ import annotations

import threading
import time

import numpy as np
import pytest
from PIL import Image

from service.bundle.preprocess import Box
from service.faces.aligned import Face
from service.faces.search_cache import FaceSearchCache, FoundFaces, pixel_digest

LANDMARKS = np.arange(10, dtype=np.float64).reshape(5, 2)


def _image(seed: int, size: tuple[int, int] = (112, 112)) -> Image.Image:
    pixels = np.random.default_rng(seed).integers(0, 256, (size[1], size[0], 3), dtype=np.uint8)
    return Image.fromarray(pixels)


def _faces(n: int = 1) -> list[Face]:
    return [Face(Box(i, 2 * i, 40 + i, 41 + i), 0.5 - i, LANDMARKS + i) for i in range(n)]


class CountingSearch:
    """A search that returns ``faces`` (or raises ``error``) after ``gate`` opens, counting
    its calls."""

    def __init__(self, faces: list[Face], error: Exception | None = None) -> None:
        self.faces, self.error = faces, error
        self.calls = 0
        self.started = threading.Event()
        self.gate = threading.Event()
        self.gate.set()

    def __call__(self) -> list[Face]:
        self.calls += 1
        self.started.set()
        self.gate.wait(30)
        if self.error is not None:
            raise self.error
        return self.faces


def test_the_digest_changes_with_one_pixel_and_with_the_shape():
    image = _image(1, (64, 48))
    changed = image.copy()
    changed.putpixel((63, 47), tuple(255 - v for v in image.getpixel((63, 47))))
    same_bytes_other_shape = Image.frombytes("RGB", (48, 64), image.tobytes())
    digests = {
        pixel_digest(i) for i in (image, changed, same_bytes_other_shape, image.convert("L"))
    }
    assert len(digests) == 4
    assert pixel_digest(image.copy()) == pixel_digest(image)


def test_the_digest_of_a_tall_image_reads_every_band():
    """The digest reads the pixels in bands of ~1 MB: a change in the last row counts."""
    image = Image.new("RGB", (1000, 1200), "white")
    changed = image.copy()
    changed.putpixel((999, 1199), (0, 0, 0))
    assert pixel_digest(image) != pixel_digest(changed)


def test_a_repeat_is_a_hit_and_returns_equal_read_only_faces():
    cache = FaceSearchCache(4)
    search = CountingSearch(_faces(2))
    first, how_first = cache.search(_image(1), search)
    again, how_again = cache.search(_image(1), search)
    assert (how_first, how_again, search.calls) == ("miss", "hit", 1)
    for faces in (first, again):
        assert [f.box for f in faces] == [f.box for f in search.faces]
        assert [f.score for f in faces] == [f.score for f in search.faces]
        for face, original in zip(faces, search.faces, strict=True):
            np.testing.assert_array_equal(face.landmarks, original.landmarks)
            with pytest.raises(ValueError, match="read-only"):
                face.landmarks[0, 0] = -1.0
    assert cache.entries == 1 and cache.bytes == FoundFaces.of(search.faces).landmarks.nbytes + (
        2 * 4 * 8 + 2 * 8
    )


def test_no_faces_is_kept_too():
    cache = FaceSearchCache(4)
    search = CountingSearch([])
    assert cache.search(_image(2), search) == ([], "miss")
    assert cache.search(_image(2), search) == ([], "hit")
    assert search.calls == 1


def test_at_most_max_entries_are_kept_the_least_recently_used_evicted_first():
    cache = FaceSearchCache(2)
    search = CountingSearch(_faces())
    for seed in (1, 2):
        cache.search(_image(seed), search)
    cache.search(_image(1), search)  # 1 is now the more recently used
    cache.search(_image(3), search)  # evicts 2
    assert cache.entries == 2
    assert cache.search(_image(1), search)[1] == "hit"
    assert cache.search(_image(3), search)[1] == "hit"
    assert cache.search(_image(2), search)[1] == "miss"
    assert search.calls == 4


def test_the_byte_bound_holds_whatever_the_entry_bound():
    one = FoundFaces.of(_faces(3))
    size = one.boxes.nbytes + one.scores.nbytes + one.landmarks.nbytes
    cache = FaceSearchCache(100, max_bytes=2 * size)
    search = CountingSearch(_faces(3))
    for seed in range(5):
        cache.search(_image(seed), search)
    assert cache.entries == 2 and cache.bytes == 2 * size


def test_zero_entries_turns_it_off_every_call_searches():
    cache = FaceSearchCache(0)
    search = CountingSearch(_faces())
    for _ in range(3):
        faces, how = cache.search(_image(1), search)
        assert how == "miss" and faces is search.faces
    assert search.calls == 3 and cache.entries == 0 and not cache.enabled


def _at_once(cache: FaceSearchCache, image: Image.Image, search: CountingSearch, n: int) -> list:
    """``n`` threads ask ``cache`` for ``image`` while the first search is held at its gate;
    each one's outcome: (faces, how) or the exception raised."""
    search.gate.clear()
    outcomes: list = [None] * n

    def ask(index: int) -> None:
        try:
            outcomes[index] = cache.search(image, search)
        except Exception as exc:  # noqa: BLE001 -- the outcome under test
            outcomes[index] = exc

    threads = [threading.Thread(target=ask, args=(i,)) for i in range(n)]
    for thread in threads:
        thread.start()
    assert search.started.wait(10)
    flight = cache._flights[pixel_digest(image)]
    deadline = time.monotonic() + 30
    while flight.waiters < n - 1 and time.monotonic() < deadline:
        time.sleep(0.005)  # until every other caller waits on the search in progress
    search.gate.set()
    for thread in threads:
        thread.join(30)
    return outcomes


def test_concurrent_calls_for_the_same_pixels_run_one_search():
    cache = FaceSearchCache(4)
    search = CountingSearch(_faces(2))
    outcomes = _at_once(cache, _image(7), search, 12)
    assert search.calls == 1
    hows = sorted(how for _, how in outcomes)
    assert hows == ["miss"] + ["shared"] * 11
    boxes = {tuple(f.box for f in faces) for faces, _ in outcomes}
    assert boxes == {tuple(f.box for f in search.faces)}


def test_an_exception_reaches_every_waiter_and_is_not_kept():
    cache = FaceSearchCache(4)
    failing = CountingSearch([], RuntimeError("detector broke"))
    outcomes = _at_once(cache, _image(8), failing, 6)
    assert failing.calls == 1
    assert all(isinstance(o, RuntimeError) and str(o) == "detector broke" for o in outcomes)
    assert cache.entries == 0
    working = CountingSearch(_faces())
    assert cache.search(_image(8), working)[1] == "miss" and working.calls == 1
