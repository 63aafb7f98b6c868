"""The face detector's worst-case uploads, built in memory (never committed).

Shared by ``test_detector.py`` and ``bench/bench_detector_worst_case.py``. A blank strip is a
~1 KB PNG that once cost the detector minutes and gigabytes (its retry padded by a quarter of the
longer side, then searched the result enlarged); a 12-megapixel photo without a face makes the
detector run both of its passes on the largest view it allows.
"""

from __future__ import annotations

import io
from collections.abc import Callable

from PIL import Image

PHOTO_SIZE = (4000, 3000)
# A face the first pass finds (score 2.9), relative to celebs8/: what /predict is timed on.
FACE = "tom_hanks/9986.png"


def blank_png(width: int, height: int) -> bytes:
    """A white ``width x height`` RGB PNG (20000x16: about 1 KB)."""
    buffer = io.BytesIO()
    Image.new("RGB", (width, height), "white").save(buffer, format="PNG", optimize=True)
    return buffer.getvalue()


def faceless_photo(size: tuple[int, int] = PHOTO_SIZE) -> bytes:
    """A JPEG (quality 90) of ``size`` without a face: scikit-image's immunohistochemistry
    sample (a stained tissue texture, 512x512) enlarged; about 1 MB at 4000x3000."""
    from skimage import data  # imported here: only these uploads need it

    texture = Image.fromarray(data.immunohistochemistry()).convert("RGB")
    buffer = io.BytesIO()
    texture.resize(size, Image.Resampling.BICUBIC).save(buffer, format="JPEG", quality=90)
    return buffer.getvalue()


# name -> (builder, content type)
WORST_CASES: dict[str, tuple[Callable[[], bytes], str]] = {
    "blank-20000x16": (lambda: blank_png(20000, 16), "image/png"),
    "blank-8000x16": (lambda: blank_png(8000, 16), "image/png"),
    "photo-12mp": (faceless_photo, "image/jpeg"),
}
