"""The bounds on a whole body and on open connections, and what a page of an allowed origin may
do cross-origin, against ``python -m service`` over raw sockets.

The body and connection bounds are tested on services started with small bounds (a 2 s body
timeout, 4 connections), so that the tests wait seconds, not the defaults' minutes; the code
is the same whatever the numbers.
"""

from __future__ import annotations

import socket
import threading
from pathlib import Path

import pytest

from service.app import CORS_EXPOSED_HEADERS
from service.settings import Settings

from .raw_http import (
    closed_connections,
    connect,
    multipart,
    read_response,
    read_until_closed,
    request_head,
)

# service processes, and a body trickled past its timeout
pytestmark = pytest.mark.slow

DEFAULTS = Settings(_env_file=None)
SLACK_S = 15.0
BODY_TIMEOUT_S = 2.0
MIN_RATE = 100.0
TRICKLE_EVERY_S = 1.0  # never a stall of BODY_TIMEOUT_S, far under MIN_RATE on average
ORIGIN = DEFAULTS.cors_origins[0]


@pytest.fixture(scope="module")
def face_png(celebs_root: Path) -> bytes:
    return sorted((celebs_root / "tom_hanks").glob("*.png"))[0].read_bytes()


def _trickle(sock: socket.socket, data: bytes, stop: threading.Event) -> int:
    """Send ``data`` a byte every ``TRICKLE_EVERY_S`` until the server closes or ``stop``;
    returns the bytes sent."""
    sent = 0
    for byte in data:
        if stop.wait(TRICKLE_EVERY_S):
            break
        try:
            sock.sendall(bytes([byte]))
        except OSError:
            break
        sent += 1
    return sent


def test_a_body_trickled_under_the_minimum_rate_is_cut_with_408(start_service, face_png):
    service = start_service(
        ["--body-timeout-s", str(BODY_TIMEOUT_S), "--min-body-rate-bytes-s", str(MIN_RATE)]
    )
    body, headers = multipart(face_png)
    sock = connect(service.url)
    sock.sendall(request_head("POST", "/predict?detect=false", headers))
    stop = threading.Event()
    sent: list[int] = []
    trickler = threading.Thread(target=lambda: sent.append(_trickle(sock, body, stop)))
    trickler.start()
    try:
        # cut once BODY_TIMEOUT_S has passed, at the next byte: long before the body could end
        response = read_until_closed(sock, BODY_TIMEOUT_S + TRICKLE_EVERY_S + SLACK_S)
    finally:
        stop.set()
        trickler.join()

    assert response.status == 408, response.body
    assert response.json()["error"]["code"] == "request_timeout"
    assert "bytes/s" in response.json()["error"]["message"]
    assert response.headers["connection"] == "close"
    assert sent[0] < len(body)
    assert closed_connections(service.url).get("body_too_slow") == 1
    assert closed_connections(service.url).get("body_timeout", 0) == 0  # never a stall


def test_an_upload_at_a_steady_pace_over_the_body_timeout_is_answered(start_service, face_png):
    """Slow but above the minimum rate: the whole body is taken, however long it takes."""
    service = start_service(
        ["--body-timeout-s", str(BODY_TIMEOUT_S), "--min-body-rate-bytes-s", str(MIN_RATE)]
    )
    body, headers = multipart(face_png)
    sock = connect(service.url)
    sock.sendall(request_head("POST", "/predict?detect=false", headers, close=True))
    pieces = 8  # over 3 x BODY_TIMEOUT_S, at far more than MIN_RATE
    step = len(body) // pieces + 1
    stop = threading.Event()
    for start in range(0, len(body), step):
        stop.wait(0.8)
        sock.sendall(body[start : start + step])

    response = read_until_closed(sock, 120)

    assert response.status == 200, response.body
    assert closed_connections(service.url).get("body_too_slow", 0) == 0


def test_connections_over_the_limit_are_refused_as_they_open_and_the_others_served(
    start_service,
):
    limit = 4
    service = start_service(["--max-connections", str(limit)])
    held = [connect(service.url) for _ in range(limit)]
    try:
        refused = connect(service.url)
        response = read_until_closed(refused, SLACK_S)

        assert response.status == 503, response.body
        assert response.json()["error"]["code"] == "overloaded"
        assert response.headers["retry-after"] == "1"
        assert response.headers["connection"] == "close"
        # the held connections are served
        for sock in held:
            sock.sendall(request_head("GET", "/healthz"))
            assert read_response(sock).status == 200
        assert closed_connections_on(held[0]).get("too_many_connections") == 1
    finally:
        for sock in held:
            sock.close()
    # with those closed there is room again
    again = connect(service.url)
    again.sendall(request_head("GET", "/healthz", close=True))
    assert read_until_closed(again, SLACK_S).status == 200


def closed_connections_on(sock: socket.socket) -> dict[str, float]:
    """``celebxai_connections_closed_total`` read on an open connection (a new one could be
    the one refused)."""
    sock.sendall(request_head("GET", "/metrics"))
    text = read_response(sock).body.decode()
    counts = {}
    for line in text.splitlines():
        if line.startswith("celebxai_connections_closed_total{"):
            reason = line.split('reason="')[1].split('"')[0]
            counts[reason] = float(line.split()[-1])
    return counts


def test_an_allowed_origin_may_delete_a_job_and_read_its_location(service_process, face_png):
    url = service_process.url
    preflight = connect(url)
    preflight.sendall(
        request_head(
            "OPTIONS",
            "/jobs/0123456789abcdef01234567",
            {
                "Origin": ORIGIN,
                "Access-Control-Request-Method": "DELETE",
                "Access-Control-Request-Headers": "x-api-key",
            },
            close=True,
        )
    )
    allowed = read_until_closed(preflight, SLACK_S)
    assert allowed.status == 200, allowed.body
    assert allowed.headers["access-control-allow-origin"] == ORIGIN
    assert "DELETE" in allowed.headers["access-control-allow-methods"]

    body, headers = multipart(face_png)
    started = connect(url)
    started.sendall(
        request_head(
            "POST", "/jobs/gradient?detect=false", {**headers, "Origin": ORIGIN}, close=True
        )
        + body
    )
    made = read_until_closed(started, 120)
    assert made.status == 202, made.body
    exposed = {h.strip().lower() for h in made.headers["access-control-expose-headers"].split(",")}
    assert exposed == {h.lower() for h in CORS_EXPOSED_HEADERS}
    location = made.headers["location"]
    assert location == f"/jobs/{made.json()['id']}"

    deleting = connect(url)
    deleting.sendall(request_head("DELETE", location, {"Origin": ORIGIN}, close=True))
    deleted = read_until_closed(deleting, SLACK_S)
    assert deleted.status == 200, deleted.body
    assert deleted.headers["access-control-allow-origin"] == ORIGIN
    assert deleted.json()["id"] == made.json()["id"]


def test_another_origin_may_not_delete_a_job(service_process):
    sock = connect(service_process.url)
    sock.sendall(
        request_head(
            "OPTIONS",
            "/jobs/0123456789abcdef01234567",
            {"Origin": "http://evil.example", "Access-Control-Request-Method": "DELETE"},
            close=True,
        )
    )
    refused = read_until_closed(sock, SLACK_S)
    assert refused.status == 403
    assert refused.json()["error"]["code"] == "cors_refused"
