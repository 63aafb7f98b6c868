"""Uploads that are small on the wire and huge once decoded cannot take the server's memory.

Against the README's ``python -m service``: 8 concurrent 6000x6000 single-colour PNGs (~150 KB
each, 108 MB of RGB decoded, within the 40-megapixel limit) are processed within the pixel
budget (its own gauges say so: never more than ``max_decodes x max_image_pixels`` held, the rest
waited), the server's RSS grows by less than the stated bound while /predict on a real photo
keeps answering 200, and a PNG render of such an upload is at most 2048 x 2048.
"""

from __future__ import annotations

import io
import os
import re
import urllib.request

import pytest
from image_bytes import face_png
from PIL import Image

from service.render.png import MAX_RENDER_PIXELS

from .conftest import ServiceProcess
from .heavy_uploads import flat_png, latencies_while, post_at_once, rss_peak

# a service process of its own (tests/hostile/conftest.py), started as users start it: the RSS
# growth and the decode_pixels_peak high-water gauge would count what a shared one served before
pytestmark = pytest.mark.slow

SIDE = 6000
UPLOADS = 8
CORES = os.cpu_count() or 1
PIXEL_LIMIT = 40_000_000
# Held at once: the budget's worth of these images (2 on 2 cores), each ~3 bytes a pixel decoded
# plus its working copies; 8 at once without the budget added ~1.1 GB. The bound allows
# 100 MB + 200 MB per image the budget lets in at once.
IMAGES_AT_ONCE = min(UPLOADS, CORES * PIXEL_LIMIT // SIDE**2)
RSS_BOUND_MIB = 100 + 200 * IMAGES_AT_ONCE
RENDER_RSS_BOUND_MIB = 450


def _gauges(service: ServiceProcess) -> dict[str, float]:
    with urllib.request.urlopen(f"{service.url}/metrics", timeout=10) as response:
        text = response.read().decode()
    return {
        name: float(value)
        for name, value in re.findall(r"^(celebxai_decode_\w+) (\S+)$", text, re.MULTILINE)
    }


@pytest.fixture(scope="module")
def big_png() -> bytes:
    return flat_png(SIDE)


def test_concurrent_huge_decodes_stay_within_the_budget(
    own_service_process: ServiceProcess, big_png: bytes, celebs_root
):
    assert len(big_png) < 300 * 1024
    before = own_service_process.rss_mib()
    face = face_png(celebs_root, "tom_hanks")

    def uploads() -> list[int]:
        responses = post_at_once(f"{own_service_process.url}/predict", big_png, UPLOADS)
        return [response.status_code for response in responses]

    with rss_peak(own_service_process.process.pid) as rss:
        statuses, latencies = latencies_while(
            uploads, f"{own_service_process.url}/predict?detect=false", face
        )

    # No face in a flat image: every upload was decoded and searched, then answered 422.
    assert statuses == [422] * UPLOADS
    assert latencies  # /predict answered (200, checked by latencies_while) meanwhile
    gauges = _gauges(own_service_process)
    assert gauges["celebxai_decode_pixels_capacity"] == CORES * PIXEL_LIMIT
    assert gauges["celebxai_decode_pixels_in_use"] == 0
    assert gauges["celebxai_decode_waiting"] == 0
    # Never more held than the budget: at most IMAGES_AT_ONCE of the huge ones (+ small photos).
    assert SIDE**2 * IMAGES_AT_ONCE <= gauges["celebxai_decode_pixels_peak"]
    assert gauges["celebxai_decode_pixels_peak"] <= CORES * PIXEL_LIMIT
    grown = rss.peak_mib - before
    assert grown < RSS_BOUND_MIB, f"RSS grew {grown:.0f} MiB (bound {RSS_BOUND_MIB} MiB)"


@pytest.mark.parametrize("fmt", ["png", "overlay"])
def test_a_render_of_a_huge_upload_is_bounded(
    own_service_process: ServiceProcess, big_png: bytes, fmt: str
):
    url = f"{own_service_process.url}/saliency?method=gradient&detect=false&format={fmt}"
    before = own_service_process.rss_mib()
    with rss_peak(own_service_process.process.pid) as rss:
        (response,) = post_at_once(url, big_png, 1)
    assert response.status_code == 200, response.text
    image = Image.open(io.BytesIO(response.content))
    assert image.size == (2048, 2048) and image.width * image.height <= MAX_RENDER_PIXELS
    assert image.mode == ("RGBA" if fmt == "png" else "RGB")
    assert response.headers["X-Heatmap-Negligible"] == "false"
    # One upload: decoding it (108 MB of RGB plus the decoder's buffers) and resizing the whole
    # image to the model's input dominate (~320 MiB measured); the render adds at most 4 Mpx.
    grown = rss.peak_mib - before
    assert grown < RENDER_RSS_BOUND_MIB, f"RSS grew {grown:.0f} MiB"
