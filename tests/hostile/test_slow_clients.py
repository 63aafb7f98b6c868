"""Slow, stalled and oversized clients against ``python -m service`` with its default bounds.

Each slow connection must be closed by the server within its bound (``header_timeout_s``,
``body_timeout_s``, ``keep_alive_timeout_s``, plus ``SLACK_S`` for a busy machine): a socket
timeout fails the test when it is not. Meanwhile valid requests keep being answered, and an
unfinished head costs the server at most ``max_header_bytes`` however large it claims to be.
That last one (RSS against a baseline, 32 MiB of slack) runs on a service of its own: on the
directory's shared one, memory that earlier traffic left to the allocator could hide growth.
"""

from __future__ import annotations

import socket
import threading
import time
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from service.settings import Settings

from .raw_http import (
    closed_connections,
    connect,
    multipart,
    read_response,
    read_until_closed,
    request_head,
    send_huge_head,
)

# service processes, and the server's header, body and keep-alive timeouts waited out
pytestmark = pytest.mark.slow

DEFAULTS = Settings(_env_file=None)
SLACK_S = 15.0


@pytest.fixture(scope="module")
def face_png(celebs_root: Path) -> bytes:
    person = sorted(p for p in celebs_root.iterdir() if p.is_dir())[0]
    return sorted(person.glob("*.png"))[0].read_bytes()


def _get(url: str, path: str) -> int:
    with urllib.request.urlopen(url + path, timeout=60) as response:
        return response.status


def _post_face(url: str, data: bytes) -> int:
    body, headers = multipart(data)
    request = urllib.request.Request(f"{url}/predict?detect=false", body, headers, method="POST")
    with urllib.request.urlopen(request, timeout=120) as response:
        return response.status


def _trickle(sock: socket.socket, data: bytes, stop: threading.Event, every_s: float) -> None:
    """Send ``data`` a byte at a time (a slowloris head) until the server closes or ``stop``."""
    for byte in data:
        if stop.wait(every_s):
            return
        try:
            sock.sendall(bytes([byte]))
        except OSError:
            return


def test_slow_connections_are_closed_within_their_bounds_while_others_are_served(
    service_process, face_png
):
    url = service_process.url
    before = closed_connections(url)
    body, headers = multipart(face_png)
    stop = threading.Event()

    idle = connect(url)
    unfinished_head = connect(url)
    unfinished_head.sendall(b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Slow: ")
    slowloris = connect(url)
    trickler = threading.Thread(
        target=_trickle,
        args=(slowloris, b"GET /healthz HTTP/1.1\r\n" + b"X: y\r\n" * 500, stop, 0.5),
        daemon=True,
    )
    trickler.start()
    short_body = connect(url)
    short_body.sendall(request_head("POST", "/predict", headers) + body[:100])
    stalled_upload = connect(url)
    stalled_upload.sendall(request_head("POST", "/predict", headers) + body[: len(body) // 2])
    kept_alive = connect(url)
    kept_alive.sendall(request_head("GET", "/healthz"))
    assert read_response(kept_alive).status == 200

    # valid requests are answered while all of those are open
    assert _get(url, "/healthz") == 200
    assert _post_face(url, face_png) == 200

    bounds = {
        "idle": (idle, DEFAULTS.header_timeout_s),
        "unfinished_head": (unfinished_head, DEFAULTS.header_timeout_s),
        "slowloris": (slowloris, DEFAULTS.header_timeout_s),
        "short_body": (short_body, DEFAULTS.body_timeout_s),
        "stalled_upload": (stalled_upload, DEFAULTS.body_timeout_s),
        "kept_alive": (kept_alive, DEFAULTS.keep_alive_timeout_s),
    }
    try:
        with ThreadPoolExecutor(len(bounds)) as pool:
            futures = {
                name: pool.submit(read_until_closed, sock, bound + SLACK_S)
                for name, (sock, bound) in bounds.items()
            }
            responses = {name: future.result() for name, future in futures.items()}
    finally:
        stop.set()

    assert responses["idle"].status is None  # nothing asked, nothing answered
    assert responses["kept_alive"].status is None
    for name in ("unfinished_head", "slowloris", "short_body", "stalled_upload"):
        assert responses[name].status == 408, name
        assert responses[name].json()["error"]["code"] == "request_timeout"
        assert responses[name].headers["connection"] == "close"
    after = closed_connections(url)
    assert after.get("idle_connection", 0) - before.get("idle_connection", 0) >= 1
    assert after.get("header_timeout", 0) - before.get("header_timeout", 0) >= 2
    assert after.get("body_timeout", 0) - before.get("body_timeout", 0) >= 2
    assert _post_face(url, face_png) == 200


def test_an_upload_with_pauses_shorter_than_the_body_timeout_is_answered(service_process, face_png):
    body, headers = multipart(face_png)
    sock = connect(service_process.url)
    sock.sendall(request_head("POST", "/predict?detect=false", headers, close=True))
    third = len(body) // 3 + 1
    for start in range(0, len(body), third):
        time.sleep(1.0)
        sock.sendall(body[start : start + third])

    response = read_until_closed(sock, 120)

    assert response.status == 200, response.body


def test_a_head_over_the_limit_is_431_and_closed(service_process):
    url = service_process.url
    sock = connect(url)
    sock.sendall(
        request_head("GET", "/healthz", {"X-Big": "a" * (DEFAULTS.max_header_bytes + 1000)})
    )

    response = read_until_closed(sock, SLACK_S)

    assert response.status == 431
    assert response.json()["error"]["code"] == "headers_too_large"
    assert _get(url, "/healthz") == 200


def test_a_head_under_the_limit_is_answered(service_process):
    padding = "a" * (DEFAULTS.max_header_bytes - 2048)
    sock = connect(service_process.url)
    sock.sendall(request_head("GET", "/healthz", {"X-Padding": padding}, close=True))

    assert read_until_closed(sock, SLACK_S).status == 200


def test_many_huge_unfinished_heads_cost_bounded_memory(own_service_process):
    service_process = own_service_process
    url = service_process.url
    before = closed_connections(url).get("headers_too_large", 0)
    baseline = service_process.rss_mib()
    peak = baseline
    done = threading.Event()

    def sample() -> None:
        nonlocal peak
        while not done.wait(0.05):
            peak = max(peak, service_process.rss_mib())

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    clients, size = 8, 30 * 2**20
    try:
        with ThreadPoolExecutor(clients) as pool:
            sent = list(pool.map(lambda _: send_huge_head(url, size), range(clients)))
    finally:
        done.set()
        sampler.join()

    print(
        f"RSS {baseline:.0f} MiB, peak {peak:.0f} MiB while {clients} clients sent heads of "
        f"up to {size >> 20} MiB (sent before the server closed: {[s >> 10 for s in sent]} KiB)"
    )
    assert all(s < size for s in sent), "a client sent its whole 30 MiB head: never refused"
    assert closed_connections(url).get("headers_too_large", 0) - before == clients
    assert peak - baseline < 32, f"RSS grew by {peak - baseline:.0f} MiB"
    assert _get(url, "/healthz") == 200
