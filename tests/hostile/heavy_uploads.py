"""Small uploads that are expensive to decode, sent at once, with the server's RSS sampled.

Shared by ``test_decode_bounds.py`` and ``bench/bench_decode_bounds.py``: a single-colour PNG
of ``side x side`` RGB pixels is ~100-200 KB on the wire and ``3 * side**2`` bytes once decoded
(6000: 108 MB of RGB, ~140 MB with Pillow's working copies), within the default 40-megapixel
limit.
"""

from __future__ import annotations

import io
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor

import httpx
from PIL import Image

from tests.load.harness import RssSampler

SAMPLE_INTERVAL_S = 0.01


def flat_png(side: int, colour: tuple[int, int, int] = (90, 120, 150)) -> bytes:
    """A ``side x side`` RGB PNG of one colour (compresses ~1000:1)."""
    buffer = io.BytesIO()
    Image.new("RGB", (side, side), colour).save(buffer, format="PNG", optimize=True)
    return buffer.getvalue()


def rss_peak(pid: int) -> RssSampler:
    """A sampler of process ``pid``'s RSS every ``SAMPLE_INTERVAL_S``: ``with rss_peak(pid) as
    rss: ...`` then ``rss.peak_mib``."""
    return RssSampler(pid, SAMPLE_INTERVAL_S)


def post_at_once(
    url: str, data: bytes, count: int, timeout_s: float = 300.0
) -> list[httpx.Response]:
    """``count`` POSTs of ``data`` as multipart ``file`` to ``url``, all sent at the same moment
    (one thread and connection each)."""
    barrier = threading.Barrier(count)

    def post(_: int) -> httpx.Response:
        with httpx.Client(timeout=timeout_s) as client:
            barrier.wait()
            return client.post(url, files={"file": ("upload.png", data, "image/png")})

    with ThreadPoolExecutor(count) as pool:
        return list(pool.map(post, range(count)))


def latencies_while(
    busy: Callable[[], object], url: str, data: bytes, gap_s: float = 0.05
) -> tuple[object, list[float]]:
    """Run ``busy()`` while another thread POSTs ``data`` to ``url`` one request at a time;
    returns ``busy``'s result and those requests' latencies (ms). Every answer must be 200."""
    stop = threading.Event()
    latencies: list[float] = []
    failures: list[str] = []

    def probe() -> None:
        with httpx.Client(timeout=60) as client:
            while not stop.is_set():
                started = time.perf_counter()
                response = client.post(url, files={"file": ("face.png", data, "image/png")})
                latencies.append((time.perf_counter() - started) * 1000)
                if response.status_code != 200:
                    failures.append(f"{response.status_code} {response.text[:200]}")
                time.sleep(gap_s)

    thread = threading.Thread(target=probe, daemon=True)
    thread.start()
    try:
        result = busy()
    finally:
        stop.set()
        thread.join()
    if failures:
        raise AssertionError(f"/predict failed alongside: {failures[:3]}")
    return result, latencies
