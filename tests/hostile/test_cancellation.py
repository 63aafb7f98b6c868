"""Clients that hang up on expensive requests: their work stops, measured in the service's own
counters, and /metrics counts them as 499, not 200.

Each test sends its requests whole to a real ``python -m service`` (default settings: 2
explanations at once, 8 waiting, the rest refused with 503), waits until they have run a few
forward passes, reads ``celebxai_explanation_batches`` (forward passes run for explanations and
syntheses), then closes every socket. What may still run after that is the pass each running
request had in flight, and one more that may have started between the reading and the hang-up.
The service is the directory's shared one: every count is the difference over the test's own
requests (other tests' /lime requests are counted on the same endpoint).
"""

from __future__ import annotations

import contextlib
import json
import socket
import time
import urllib.request
import uuid
from collections import Counter
from pathlib import Path

import pytest

from tests.hostile.conftest import ServiceProcess
from tests.hostile.hang_up import (
    explanation_batches,
    request_counts,
    send_request,
    status_of,
    wait_for,
)
from tests.image_bytes import face_png

# the directory's shared service process (tests/hostile/conftest.py), started as users start it
pytestmark = pytest.mark.slow

MAX_EXPLANATIONS = 2  # the service's default max_explanations
ADMITTED = 10  # the default max_explanations (2) and explanation_queue (8)
PASSES_AFTER_HANG_UP = 2 * MAX_EXPLANATIONS
PASSES_BEFORE_HANG_UP = 3
SETTLE_TIMEOUT_S = 60.0


@pytest.fixture(scope="module")
def face(celebs_root: Path) -> bytes:
    return face_png(celebs_root, "tom_hanks")


def _hang_up_once_running(service: ServiceProcess, sockets: list, start: int) -> int:
    """Wait until the work has run a few passes since ``start``, read the pass counter, then
    close every socket; returns the counter read. The counter is read every 20 ms: the work
    must not run to its end while the test looks away."""
    wait_for(
        lambda: explanation_batches(service.url) >= start + PASSES_BEFORE_HANG_UP,
        SETTLE_TIMEOUT_S,
        f"{PASSES_BEFORE_HANG_UP} forward passes",
        every_s=0.02,
    )
    before = explanation_batches(service.url)
    for sock in sockets:
        sock.close()
    return before


def _answered_since(service: ServiceProcess, endpoint: str, before: Counter[str]) -> Counter[str]:
    """Requests answered on ``endpoint`` since ``before`` (``request_counts`` then), by status."""
    return request_counts(service.url, endpoint) - before


def _refused(
    service: ServiceProcess, sockets: list[socket.socket], before: Counter[str], expected: int
) -> int:
    """How many of ``sockets`` were answered 503, read once ``/metrics`` counts ``expected``
    /lime 503s since ``before`` (or ``SETTLE_TIMEOUT_S`` passed): one short look at every
    socket, not a wait on each for an answer that the admitted ones never give (which left their
    work seconds to run to its end before the hang-up)."""
    with contextlib.suppress(TimeoutError):
        wait_for(
            lambda: _answered_since(service, "/lime", before)["503"] >= expected,
            SETTLE_TIMEOUT_S,
            f"{expected} /lime requests refused",
            every_s=0.02,
        )
    time.sleep(0.05)  # the last 503 counted is on its way through loopback
    return sum(status_of(sock) == 503 for sock in sockets)


def _predict(service: ServiceProcess, face: bytes) -> dict:
    boundary = uuid.uuid4().hex
    body = (
        (
            f'--{boundary}\r\nContent-Disposition: form-data; name="file"; filename="f.png"\r\n'
            "Content-Type: image/png\r\n\r\n"
        ).encode()
        + face
        + f"\r\n--{boundary}--\r\n".encode()
    )
    request = urllib.request.Request(
        f"{service.url}/predict?detect=false",
        data=body,
        headers={"Content-Type": f"multipart/form-data; boundary={boundary}"},
    )
    with urllib.request.urlopen(request, timeout=30) as response:
        assert response.status == 200
        return json.loads(response.read())


def test_abandoned_lime_requests_stop_and_count_as_499(
    service_process: ServiceProcess, face: bytes
):
    service = service_process
    sent = 16
    answered_before = request_counts(service.url, "/lime")
    start = explanation_batches(service.url)
    sockets = [
        send_request(
            service.url,
            "POST",
            "/lime",
            {"num_samples": 2000, "seed": seed, "detect": "false"},
            ("face.png", face),
        )
        for seed in range(sent)
    ]
    # /predict keeps answering while explanations run
    assert _predict(service, face)["label"] == "tom_hanks"
    refused = _refused(service, sockets, answered_before, sent - ADMITTED)

    before = _hang_up_once_running(service, sockets, start)

    wait_for(
        lambda: sum(_answered_since(service, "/lime", answered_before).values()) == sent,
        SETTLE_TIMEOUT_S,
        f"all {sent} /lime requests answered",
    )
    counts = _answered_since(service, "/lime", answered_before)
    after = explanation_batches(service.url)
    assert counts == {"499": sent - refused, "503": refused}
    assert refused == sent - ADMITTED  # 2 running + 8 waiting; the queue holds no more
    # A whole run is 1 + ceil(2000 / 32) = 64 passes each (the largest LIME: the most room for
    # the hang-up to come before any ends); the 10 admitted would run 640.
    assert after - before <= PASSES_AFTER_HANG_UP
    assert _predict(service, face)["label"] == "tom_hanks"


def test_abandoned_syntheses_stop_and_count_as_499(service_process: ServiceProcess, face: bytes):
    service = service_process
    sent = 4
    answered_before = request_counts(service.url, "/insight/maximize")
    start = explanation_batches(service.url)
    sockets = [
        send_request(
            service.url,
            "GET",
            "/insight/maximize",
            {"class": "tom_hanks", "steps": 300, "max_seconds": 60, "seed": 1000 + seed},
        )
        for seed in range(sent)
    ]
    # /predict keeps answering while syntheses run
    assert _predict(service, face)["label"] == "tom_hanks"

    before = _hang_up_once_running(service, sockets, start)

    wait_for(
        lambda: (
            sum(_answered_since(service, "/insight/maximize", answered_before).values()) == sent
        ),
        SETTLE_TIMEOUT_S,
        f"all {sent} /insight/maximize requests answered",
    )
    after = explanation_batches(service.url)
    assert _answered_since(service, "/insight/maximize", answered_before) == {"499": sent}
    # 300 steps each would be 1200 passes of the twin
    assert after - before <= PASSES_AFTER_HANG_UP


def test_a_request_that_waits_for_its_answer_still_gets_it(
    service_process: ServiceProcess, face: bytes
):
    """The watcher must not mistake the end of the request body for a hang-up."""
    sock = send_request(
        service_process.url,
        "POST",
        "/lime",
        {"num_samples": 16, "seed": 99, "detect": "false"},
        ("face.png", face),
    )
    try:
        assert status_of(sock, timeout_s=SETTLE_TIMEOUT_S) == 200
    finally:
        sock.close()
