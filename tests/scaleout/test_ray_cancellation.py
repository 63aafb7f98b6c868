"""Clients that hang up on ``python -m service --ray``: the gateway cancels the call, Ray
cancels the replica's task, the replica's app receives ``http.disconnect``, and the work stops,
counted as 499 in the merged ``/metrics``, as in the single-process service
(tests/hostile/test_cancellation.py).

``/metrics`` in Ray mode is what the replicas last published (every few seconds), so the
check is made on one consistent snapshot: once it counts both requests as 499 (each app counts
a request when it has answered it, i.e. when its work has stopped), the forward passes it
reports must not grow any more.
"""

from __future__ import annotations

import time

import pytest

from service.scaleout.metrics_merge import PUBLISH_EVERY_S
from tests.hostile.hang_up import explanation_batches, request_counts, wait_for
from tests.scaleout.conftest import API_KEY, RayService
from tests.scaleout.multipart import send_whole

# the single-process and Ray services of the session (tests/scaleout/conftest.py)
pytestmark = pytest.mark.ray

MAXIMIZE = "/insight/maximize"
SENT = 2  # the Explain replica's max ongoing requests (conftest)
SETTLE_TIMEOUT_S = 90.0


def test_hung_up_syntheses_stop_in_the_replica_and_count_as_499(ray_service: RayService):
    url = ray_service.url
    start = explanation_batches(url)
    before = request_counts(url, MAXIMIZE)
    sockets = [
        send_whole(
            url,
            "GET",
            MAXIMIZE,
            {"class": "tom_hanks", "steps": 300, "max_seconds": 60, "seed": 2000 + seed},
            {"X-API-Key": API_KEY},
        )
        for seed in range(SENT)
    ]
    wait_for(lambda: explanation_batches(url) >= start + 3, SETTLE_TIMEOUT_S, "3 passes")
    for sock in sockets:
        sock.close()

    wait_for(
        lambda: request_counts(url, MAXIMIZE)["499"] - before["499"] >= SENT,
        SETTLE_TIMEOUT_S,
        f"{SENT} syntheses counted as 499",
    )
    stopped_at = explanation_batches(url)
    time.sleep(2 * PUBLISH_EVERY_S)  # two more publications of every replica

    counts = request_counts(url, MAXIMIZE)
    counts.subtract(before)
    assert +counts == {"499": SENT}, counts
    assert explanation_batches(url) == stopped_at
    # 300 steps each would be 600 passes of the twin; they stopped long before
    assert stopped_at - start < 300
