"""Face search: what each pass searches (bounded for any upload) and where what it finds lands.

A real face crop is placed at a known offset and scale in uploads small and large, searched
with and without the padded retry; its box and landmarks must land where the same face's
landmarks, found on a plain unscaled placement, map to.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from service.bundle.format import read_meta
from service.faces import finder as faces
from service.faces.finder import (
    SEARCH_MAX_PIXELS,
    FaceFinder,
    SearchView,
    first_pass_scale,
    retry_scale,
    view_area,
)

FACE = "jennifer_aniston/4337.png"  # 112x112; the first pass finds its face (box 21, 37, 73, 73)
CLOSE_UP = (28.0, 44.0, 58.0)  # (left, top, width): the middle of that box; the face overflows it
# Landmarks may move this much (pixels of the 112-px crop) between scales: dlib's landmark
# model and the detector's image pyramid see differently resampled pixels.
LANDMARK_TOLERANCE = 3.0


@pytest.fixture(scope="module")
def finder(default_bundle: Path) -> FaceFinder:
    return FaceFinder(read_meta(default_bundle).face_alignment, workers=1)


@pytest.fixture(scope="module")
def crop(celebs_root: Path) -> Image.Image:
    return Image.open(celebs_root / FACE).convert("RGB")


def _searched_pixels(finder: FaceFinder) -> float:
    samples = finder.metrics.pixels.collect()[0].samples
    return next(s.value for s in samples if s.name.endswith("_sum"))


@pytest.mark.parametrize(
    "size",
    [
        (16, 16),
        (112, 112),
        (250, 250),
        (640, 480),
        (1600, 1600),
        (4000, 3000),
        (6000, 6000),
        (8000, 16),
        (20000, 16),
        (16, 20000),
    ],
)
def test_every_pass_searches_at_most_the_pixel_budget(size):
    image = Image.new("RGB", size, "white")
    first = SearchView.of(image, first_pass_scale(*size))
    retry = SearchView.of(image, retry_scale(*size), faces.RETRY_PADDING)
    assert first.area <= SEARCH_MAX_PIXELS and retry.area <= SEARCH_MAX_PIXELS
    assert retry.area == view_area(size, retry_scale(*size), faces.RETRY_PADDING)
    if min(size) == 16 and max(size) > 1000:  # a strip stays a strip: no padding by its length
        assert first.area + retry.area <= 10_000


def test_small_uploads_are_searched_as_they_are_then_padded_and_enlarged_twice():
    image = Image.new("RGB", (112, 112))
    assert SearchView.of(image, first_pass_scale(112, 112)).pixels.shape == (112, 112, 3)
    retry = SearchView.of(image, retry_scale(112, 112), faces.RETRY_PADDING)
    assert retry.scale == (2.0, 2.0) and retry.pad == 56 and retry.pixels.shape == (336, 336, 3)


@pytest.mark.parametrize(
    ("size", "scale", "padding"),
    [
        ((300, 200), 1.0, 0.0),
        ((300, 200), 2.0, 0.25),
        ((3000, 1800), 800 / 3000, 0.0),
        ((3000, 1800), 0.2, 0.25),
        ((5000, 40), 0.16, 0.25),
    ],
)
def test_a_view_maps_its_pixels_back_onto_the_upload(size, scale, padding):
    image = Image.new("RGB", size, "black")
    left, top = size[0] * 0.4, size[1] * 0.25
    right, bottom = left + size[0] * 0.3, top + size[1] * 0.5
    image.paste((255, 255, 255), (round(left), round(top), round(right), round(bottom)))
    view = SearchView.of(image, scale, padding)

    ys, xs = np.nonzero(view.pixels[..., 0] > 127)
    found = view.to_image(np.array([[xs.min(), ys.min()], [xs.max() + 1, ys.max() + 1]], float))
    slack = np.array([1 / view.scale[0], 1 / view.scale[1]]) + 1  # one searched pixel, rounding
    assert np.all(np.abs(found - [[left, top], [right, bottom]]) <= slack), found


@dataclass(frozen=True)
class Placement:
    """An upload holding the crop, and the map of crop pixel centres to upload pixel centres."""

    image: Image.Image
    crop_to_image: Callable[[np.ndarray], np.ndarray]
    scale: float  # upload pixels per crop pixel


def _pasted(
    crop: Image.Image, canvas: tuple[int, int], at: tuple[int, int], scale: int
) -> Placement:
    """``crop`` enlarged ``scale`` times, pasted at ``at`` on a grey canvas."""
    image = Image.new("RGB", canvas, (128, 128, 128))
    enlarged = crop.resize((crop.width * scale, crop.height * scale), Image.Resampling.BICUBIC)
    image.paste(enlarged, at)
    return Placement(image, lambda p: (p + 0.5) * scale - 0.5 + at, scale)


def _close_up(crop: Image.Image, region: tuple[float, float, float], side: int) -> Placement:
    """The square ``region`` (left, top, width) of ``crop`` enlarged to ``side`` pixels: the face
    fills the frame, so the first pass misses it."""
    left, top, width = region
    box = (left, top, left + width, top + width)
    image = crop.resize((side, side), Image.Resampling.BICUBIC, box=box)
    k = side / width
    return Placement(image, lambda p: (p + 0.5 - [left, top]) * k - 0.5, k)


@pytest.fixture(scope="module")
def reference(finder: FaceFinder, crop: Image.Image) -> np.ndarray:
    """The crop's landmarks (crop pixels), found on a placement searched as it is: three times
    enlarged in a 600x600 canvas, no shrinking, no padding."""
    placement = _pasted(crop, (600, 600), (120, 90), 3)
    assert first_pass_scale(*placement.image.size) == 1.0
    found = finder.detect(placement.image)
    assert len(found) == 1
    return (found[0].landmarks + 0.5 - [120, 90]) / 3 - 0.5


@pytest.mark.parametrize(
    ("case", "retry"),
    [
        ("small, as it is", False),
        ("large, shrunk", False),
        ("wide strip, shrunk, then enlarged", True),
        ("small close-up, padded and enlarged", True),
        ("large close-up, padded and shrunk", True),
    ],
)
def test_box_and_landmarks_land_on_the_face_at_any_size_and_padding(
    finder, crop, reference, case, retry
):
    placement = {
        "small, as it is": lambda: _pasted(crop, (300, 240), (100, 60), 1),
        "large, shrunk": lambda: _pasted(crop, (3000, 2200), (700, 400), 12),
        "wide strip, shrunk, then enlarged": lambda: _pasted(crop, (6000, 500), (4100, 30), 4),
        "small close-up, padded and enlarged": lambda: _close_up(crop, CLOSE_UP, 112),
        "large close-up, padded and shrunk": lambda: _close_up(crop, CLOSE_UP, 1600),
    }[case]()
    width, height = placement.image.size
    first_area = SearchView.of(placement.image, first_pass_scale(width, height)).area
    searched_before = _searched_pixels(finder)

    found = finder.detect(placement.image)

    used_retry = _searched_pixels(finder) - searched_before > first_area
    assert used_retry == retry, "the case no longer exercises the path it is named for"
    assert found, case
    expected = placement.crop_to_image(reference)
    error = np.abs(found[0].landmarks - expected).max() / placement.scale
    assert error <= LANDMARK_TOLERANCE, f"{case}: landmarks off by {error:.1f} crop pixels"
    box = found[0].box
    centre = np.array([box.x + box.width / 2, box.y + box.height / 2])
    eyes_and_nose = expected.mean(axis=0)
    assert np.abs(centre - eyes_and_nose).max() <= 0.25 * box.width, (case, box, eyes_and_nose)
    assert 0 <= box.x and box.x + box.width <= width and 0 <= box.y and box.y + box.height <= height
