"""An Explain replica killed (by Ray's API) under mixed load: Ray replaces it, and no client
notices more than a 503 with ``Retry-After``.

Four clients send requests back to back through ``python -m service --ray`` (two of
``/predict``, two of explanations), a replica of ``Explain`` is killed with ``ray.kill``, and
the load goes on until Serve reports the deployment healthy with its replica count again.
Every request must end within its timeout with a 2xx, or a 503 carrying ``Retry-After``;
none may get another 5xx, hang, or go unanswered.
"""

from __future__ import annotations

import threading
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.image_bytes import face_png
from tests.scaleout.conftest import API_KEY, RayService

# the single-process and Ray services of the session (tests/scaleout/conftest.py)
pytestmark = pytest.mark.ray

APP = "celebxai"
EXPLAIN = "Explain"
CLIENT_TIMEOUT_S = 120.0  # above the service's ray_request_timeout_s (conftest: 90 s)
LOAD_BEFORE_KILL_S = 5.0
LOAD_AFTER_RECOVERY_S = 5.0
RECOVERY_BOUND_S = 240.0


@dataclass
class Tally:
    """What the clients saw."""

    sent: int = 0
    statuses: Counter[int] = field(default_factory=Counter)
    without_retry_after: int = 0
    hangs: int = 0  # no answer within CLIENT_TIMEOUT_S
    lost: int = 0  # the connection failed: no answer at all
    lock: threading.Lock = field(default_factory=threading.Lock)

    def record(self, response: httpx.Response | None, error: Exception | None) -> None:
        with self.lock:
            if response is not None:
                self.statuses[response.status_code] += 1
                if response.status_code == 503 and "retry-after" not in response.headers:
                    self.without_retry_after += 1
            elif isinstance(error, httpx.TimeoutException):
                self.hangs += 1
            else:
                self.lost += 1

    def summary(self) -> str:
        answered = sum(self.statuses.values())
        ok = sum(n for status, n in self.statuses.items() if 200 <= status < 300)
        other_5xx = sum(n for s, n in self.statuses.items() if s >= 500 and s != 503)
        return (
            f"requests {self.sent}, answered {answered}, 2xx {ok}, 503 {self.statuses[503]} "
            f"(without Retry-After {self.without_retry_after}), other 5xx {other_5xx}, "
            f"hangs {self.hangs}, lost {self.lost}, by status {dict(self.statuses)}"
        )


@pytest.fixture(scope="module")
def ray_driver(ray_service: RayService) -> Iterator[Any]:
    """``ray``, joined to the service's Ray instance as a second driver (this module only:
    the two-node test starts a cluster of its own in this process)."""
    import ray
    from ray._raylet import Config

    # A local instance started by ray.init() requires Ray's token (~/.ray/auth_token); a
    # driver joining it by address sends it only in token mode, which Ray reads from
    # RAY_AUTH_MODE into its config (refreshed here as Ray's own _enable_token_auth does;
    # restored afterwards for the two-node cluster, which runs without tokens).
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("RAY_AUTH_MODE", "token")
        Config.initialize("")
        ray.init(address=ray_service.ray_address, log_to_driver=False)
        try:
            yield ray
        finally:
            ray.shutdown()
    Config.initialize("")


def _client(url: str, path: str, params: dict, face: bytes, tally: Tally, stop: threading.Event):
    with httpx.Client(base_url=url, timeout=CLIENT_TIMEOUT_S, headers={"X-API-Key": API_KEY}) as c:
        while not stop.is_set():
            with tally.lock:
                tally.sent += 1
            response, error = None, None
            try:
                response = c.post(path, params=params, files={"file": ("f.png", face)})
            except httpx.HTTPError as exc:
                error = exc
            tally.record(response, error)
            if response is not None and response.status_code == 503:
                time.sleep(0.2)  # as a client honouring Retry-After would, but sooner


def _explain_replicas(ray: Any) -> list[str]:
    return sorted(
        actor["name"]
        for actor in ray.util.list_named_actors(all_namespaces=True)
        if actor["name"].startswith(f"SERVE_REPLICA::{APP}#{EXPLAIN}#")
    )


def _explain_healthy(replicas: int) -> bool:
    from ray import serve

    deployment = serve.status().applications[APP].deployments[EXPLAIN]
    running = deployment.replica_states.get("RUNNING", 0)
    return deployment.status == "HEALTHY" and running == replicas


def test_killed_explain_replica_is_replaced_without_errors(
    ray_service: RayService, ray_driver: Any, celebs_root: Path
):
    ray = ray_driver
    face = face_png(celebs_root, "keanu_reeves")
    before = _explain_replicas(ray)
    assert len(before) == 1 and _explain_healthy(1), before
    tally, stop = Tally(), threading.Event()
    loads = [
        ("/predict", {"detect": "false"}),
        ("/predict", {}),
        ("/explain/gradcam", {"format": "json", "detect": "false"}),
        ("/occlusion", {"format": "json", "detect": "false", "window": "32", "stride": "16"}),
    ]
    clients = [
        threading.Thread(target=_client, args=(ray_service.url, path, params, face, tally, stop))
        for path, params in loads
    ]
    for client in clients:
        client.start()
    try:
        time.sleep(LOAD_BEFORE_KILL_S)
        killed_at = time.perf_counter()
        ray.kill(ray.get_actor(before[0], namespace="serve"), no_restart=True)
        while not (_explain_replicas(ray) not in ([], before) and _explain_healthy(1)):
            assert time.perf_counter() - killed_at < RECOVERY_BOUND_S, tally.summary()
            time.sleep(0.5)
        recovery_s = time.perf_counter() - killed_at
        time.sleep(LOAD_AFTER_RECOVERY_S)
    finally:
        stop.set()
        for client in clients:
            client.join(CLIENT_TIMEOUT_S + 10)
    print(f"\nfault test: {tally.summary()}; {EXPLAIN} healthy again {recovery_s:.1f} s later")

    answered = sum(tally.statuses.values())
    assert not any(client.is_alive() for client in clients)
    assert answered == tally.sent and tally.lost == 0 and tally.hangs == 0, tally.summary()
    assert all(s < 500 or s == 503 for s in tally.statuses), tally.summary()
    assert tally.without_retry_after == 0, tally.summary()
    assert sum(n for s, n in tally.statuses.items() if 200 <= s < 300) > 0, tally.summary()
    # After recovery, explanations are served again.
    with httpx.Client(base_url=ray_service.url, timeout=CLIENT_TIMEOUT_S) as client:
        response = client.post(
            "/explain/gradcam",
            params={"format": "json", "detect": "false"},
            files={"file": ("f.png", face)},
            headers={"X-API-Key": API_KEY},
        )
    assert response.status_code == 200, response.text
    assert response.headers["x-served-by"].startswith(f"{EXPLAIN}#")
