"""The same photo gets the same faces under any load: the finder called from many threads at once
on photos that need the retry or the second look, cache off and on, against one sequential run.

The search is bounded by pixels and views only. To show that no clock decides anything, the
concurrent runs go on under a clock that races (every reading an hour after the last): a search
that skipped the retry or a second look after so many seconds would answer ``no_face``.
"""

from __future__ import annotations

import itertools
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest
from nonface_images import crop_sized, skimage_photo
from PIL import Image

from service.bundle.format import read_meta
from service.faces.finder import FaceFinder

# a service process's worth of work from 16 threads: ~10 s on two cores
pytestmark = pytest.mark.slow

FACE = "celebs8/jennifer_aniston/4337.png"  # the first pass finds its face
CLOSE_UP = (28.0, 44.0, 58.0)  # (left, top, width) of that face enlarged to 112 px: the retry's
SECOND_LOOKS = ("celebs8/gwyneth_paltrow/1399.png", "celebs8/halle_berry/2476.png")  # HOG misses
THREADS = 16
REPEATS = 3

Answer = tuple[tuple[tuple[int, int, int, int], float, bytes, str], ...]


def _photos(data_root: Path) -> dict[str, Image.Image]:
    face = Image.open(data_root / FACE).convert("RGB")
    left, top, width = CLOSE_UP
    close_up = face.resize(
        (112, 112), Image.Resampling.BICUBIC, box=(left, top, left + width, top + width)
    )
    photos = {"ordinary": face, "close-up (retry)": close_up}
    for relative in SECOND_LOOKS:
        photos[f"{relative} (second look)"] = Image.open(data_root / relative).convert("RGB")
    # a weak retry "face" the CNN does not confirm, then every crop view: no face
    photos["coffee@112 (every look)"] = crop_sized(skimage_photo("coffee"))
    photos["wild"] = Image.open(
        next(iter(sorted((data_root / "wild_others").glob("*.jpg"))))
    ).convert("RGB")
    return photos


def _answer(finder: FaceFinder, image: Image.Image) -> Answer:
    """Every face found, exactly: box, score, landmarks (their bytes) and source."""
    return tuple(
        (
            (f.box.x, f.box.y, f.box.width, f.box.height),
            f.score,
            np.ascontiguousarray(f.landmarks, np.float64).tobytes(),
            f.source,
        )
        for f in finder.detect(image)
    )


@pytest.fixture(scope="module")
def photos(data_root: Path) -> dict[str, Image.Image]:
    return _photos(data_root)


@pytest.fixture(scope="module")
def sequential(default_bundle: Path, photos: dict[str, Image.Image]) -> dict[str, Answer]:
    """One search per photo, one at a time, cache off."""
    finder = FaceFinder(read_meta(default_bundle).face_alignment, workers=1)
    answers = {name: _answer(finder, image) for name, image in photos.items()}
    assert answers["ordinary"] and answers["close-up (retry)"] and answers["wild"]
    assert not answers["coffee@112 (every look)"]
    for relative in SECOND_LOOKS:
        assert answers[f"{relative} (second look)"][0][3] == "face_crop"
    return answers


@pytest.fixture
def racing_clock(monkeypatch: pytest.MonkeyPatch) -> None:
    """Every reading of the clocks a search could consult is an hour after the last."""
    hours = itertools.count(step=3600.0)
    for name in ("perf_counter", "monotonic", "time", "thread_time", "process_time"):
        monkeypatch.setattr(time, name, lambda: float(next(hours)))


def _at_once(
    finder: FaceFinder, photos: dict[str, Image.Image], answer: Callable = _answer
) -> list[tuple[str, Answer]]:
    """Every photo ``REPEATS`` times, in a shuffled order, from ``THREADS`` threads at once."""
    names = [name for name in photos for _ in range(REPEATS)]
    order = np.random.default_rng(24).permutation(len(names))
    with ThreadPoolExecutor(THREADS) as pool:
        futures = [(names[i], pool.submit(answer, finder, photos[names[i]])) for i in order]
        return [(name, future.result(timeout=300)) for name, future in futures]


@pytest.mark.parametrize("cache_entries", [0, 64], ids=["cache off", "cache on"])
def test_the_same_photos_from_many_threads_get_the_sequential_answers(
    default_bundle, photos, sequential, racing_clock, cache_entries
):
    finder = FaceFinder(
        read_meta(default_bundle).face_alignment, workers=2, cache_entries=cache_entries
    )
    answers = _at_once(finder, photos)
    changed = [name for name, answer in answers if answer != sequential[name]]
    assert not changed, f"{len(changed)} of {len(answers)} answers changed: {changed}"
    lookups = {
        sample.labels["result"]: sample.value
        for sample in finder.metrics.lookups.collect()[0].samples
        if sample.name.endswith("_total")
    }
    if cache_entries:
        # one search per photo; every other call had it from the cache or waited for it
        assert lookups["miss"] == len(photos)
        assert lookups["hit"] + lookups["shared"] == len(answers) - len(photos)
        assert finder.cache.entries == len(photos)
    else:
        assert lookups == {"hit": 0, "shared": 0, "miss": len(answers)}
