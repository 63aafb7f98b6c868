"""``python -m service --ray`` is as hard to hold as the single process: its front
(``service/scaleout/front.py``) bounds slow, oversized and too many clients with the single
process's protocol and answers (tests/hostile/test_slow_clients.py,
tests/hostile/test_connection_bounds.py), Ray Serve's proxy behind it holds nothing of theirs,
and a job is accepted at once while others run.

Raw sockets (tests/hostile/raw_http.py) make the clients no HTTP library would be.
"""

from __future__ import annotations

import contextlib
import socket
import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor

import httpx
import psutil
import pytest

from service.settings import Settings
from tests.hostile.hang_up import wait_for
from tests.hostile.raw_http import (
    closed_connections,
    connect,
    multipart,
    read_response,
    read_until_closed,
    request_head,
    send_huge_head,
)
from tests.image_bytes import face_png
from tests.scaleout.conftest import API_KEY, RayService

# the Ray service of the session (tests/scaleout/conftest.py), its default connection bounds
pytestmark = pytest.mark.ray

DEFAULTS = Settings(_env_file=None)
SLACK_S = 15.0
KEY = {"X-API-Key": API_KEY}
TIMEOUT_S = 180.0
HUGE_HEADS, HUGE_HEAD_BYTES = 8, 30 * 2**20
STALLED = 200


def _rss_mib(process: psutil.Process) -> float:
    return process.memory_info().rss / 2**20


def _proxy_process(ray_service: RayService) -> psutil.Process:
    """Ray Serve's proxy actor of the service's Ray instance."""
    for process in psutil.Process(ray_service.process.pid).children(recursive=True):
        with contextlib.suppress(psutil.Error):
            if "ProxyActor" in " ".join(process.cmdline()):
                return process
    for process in psutil.process_iter(["cmdline"]):  # started by the raylet, not the driver
        with contextlib.suppress(psutil.Error):
            if "ProxyActor" in " ".join(process.info["cmdline"] or []):
                return process
    raise AssertionError("no Ray Serve proxy process found")


def _peak_while(processes: list[psutil.Process], action: Callable[[], object]) -> list[float]:
    """Each process's peak RSS growth (MiB) over its RSS before, while ``action`` runs."""
    before = [_rss_mib(p) for p in processes]
    peaks = list(before)
    done = threading.Event()

    def sample() -> None:
        while not done.wait(0.05):
            for i, process in enumerate(processes):
                with contextlib.suppress(psutil.Error):
                    peaks[i] = max(peaks[i], _rss_mib(process))

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    try:
        action()
    finally:
        done.set()
        sampler.join()
    return [peak - start for peak, start in zip(peaks, before, strict=True)]


def test_slow_clients_get_the_single_process_answers_in_ray_mode(
    ray_service: RayService, celebs_root
):
    url = ray_service.url
    before = closed_connections(url)
    body, headers = multipart(face_png(celebs_root, "tom_hanks"))
    unfinished_head = connect(url)
    unfinished_head.sendall(b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Slow: ")
    stalled_upload = connect(url)
    stalled_upload.sendall(
        request_head("POST", "/predict?detect=false", {**headers, **KEY}) + body[: len(body) // 2]
    )
    trickled = connect(url)
    trickled.sendall(request_head("POST", "/predict?detect=false", {**headers, **KEY}))
    stop = threading.Event()

    def trickle() -> None:  # a byte a second: never a stall, far under the minimum rate
        for byte in body:
            if stop.wait(1.0):
                return
            try:
                trickled.sendall(bytes([byte]))
            except OSError:
                return

    threading.Thread(target=trickle, daemon=True).start()
    bounds = {
        "unfinished_head": (unfinished_head, DEFAULTS.header_timeout_s),
        "stalled_upload": (stalled_upload, DEFAULTS.body_timeout_s),
        "trickled": (trickled, DEFAULTS.body_timeout_s + 1.0),
    }
    try:
        # meanwhile a valid request is answered
        assert httpx.get(f"{url}/healthz").status_code == 200
        with ThreadPoolExecutor(len(bounds)) as pool:
            futures = {
                name: pool.submit(read_until_closed, sock, bound + SLACK_S)
                for name, (sock, bound) in bounds.items()
            }
            responses = {name: future.result() for name, future in futures.items()}
    finally:
        stop.set()

    for name, response in responses.items():
        assert response.status == 408, (name, response.body)
        assert response.json()["error"]["code"] == "request_timeout"
        assert response.headers["connection"] == "close"
    wanted = {"header_timeout": 1, "body_timeout": 1, "body_too_slow": 1}

    def counted() -> bool:  # /metrics holds what the front published last (every second)
        after = closed_connections(url)
        return all(after.get(k, 0) - before.get(k, 0) >= n for k, n in wanted.items())

    wait_for(counted, SLACK_S, "the front's closes in /metrics")


def test_a_head_over_the_limit_is_431_in_ray_mode(ray_service: RayService):
    sock = connect(ray_service.url)
    sock.sendall(
        request_head("GET", "/healthz", {"X-Big": "a" * (DEFAULTS.max_header_bytes + 1000)})
    )
    response = read_until_closed(sock, SLACK_S)
    assert response.status == 431
    assert response.json()["error"]["code"] == "headers_too_large"


def test_huge_heads_and_stalled_connections_cost_neither_proxy_memory(ray_service: RayService):
    url = ray_service.url
    front = psutil.Process(ray_service.process.pid)
    proxy = _proxy_process(ray_service)

    def huge_heads() -> list[int]:
        with ThreadPoolExecutor(HUGE_HEADS) as pool:
            return list(pool.map(lambda _: send_huge_head(url, HUGE_HEAD_BYTES), range(HUGE_HEADS)))

    sent: list[int] = []
    grown = _peak_while([front, proxy], lambda: sent.extend(huge_heads()))
    print(f"{HUGE_HEADS} unfinished 30 MiB heads: front +{grown[0]:.0f} MiB, proxy +{grown[1]:.0f}")
    assert all(s < HUGE_HEAD_BYTES for s in sent), "a whole 30 MiB head was taken"
    assert grown[0] < 32 and grown[1] < 32, grown

    stalled: list[socket.socket] = []

    def stall() -> None:
        for _ in range(STALLED):
            sock = connect(url)
            sock.sendall(b"POST /predict HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Stall: ")
            stalled.append(sock)
        with ThreadPoolExecutor(32) as pool:  # each is cut within the head timeout
            list(
                pool.map(
                    lambda s: read_until_closed(s, DEFAULTS.header_timeout_s + SLACK_S), stalled
                )
            )

    grown = _peak_while([front, proxy], stall)
    print(f"{STALLED} stalled connections: front +{grown[0]:.0f} MiB, proxy +{grown[1]:.0f}")
    assert grown[0] < 32 and grown[1] < 32, grown
    assert httpx.get(f"{url}/healthz").status_code == 200


def test_connections_over_the_limit_are_refused_in_ray_mode(ray_service: RayService):
    url = ray_service.url
    held: list[socket.socket] = []
    refused = []
    try:
        for _ in range(DEFAULTS.max_connections + 5):
            sock = connect(url)
            held.append(sock)
        # the front answers each connection beyond its limit at once, and closes it
        for sock in held[DEFAULTS.max_connections - 5 :]:
            sock.settimeout(0.5)
            with contextlib.suppress(TimeoutError):
                if sock.recv(1, socket.MSG_PEEK):
                    refused.append(read_until_closed(sock, SLACK_S))
        assert len(refused) >= 5, len(refused)
        assert {r.status for r in refused} == {503}
        assert {r.json()["error"]["code"] for r in refused} == {"overloaded"}
        # the connections it holds are served
        open_one = held[0]
        open_one.settimeout(SLACK_S)
        open_one.sendall(request_head("GET", "/healthz"))
        assert read_response(open_one).status == 200
    finally:
        for sock in held:
            sock.close()


def test_jobs_are_accepted_at_once_while_jobs_run_in_ray_mode(ray_service: RayService, celebs_root):
    """The Explain replica takes two requests at once (conftest): two long jobs run while
    four more are submitted, and each of those is answered 202 while the long ones still run."""
    url = ray_service.url
    face = face_png(celebs_root, "keanu_reeves")

    def start(samples: int) -> httpx.Response:
        return httpx.post(
            f"{url}/jobs/lime?detect=false&num_samples={samples}&seed=3",
            files={"file": ("face.png", face, "image/png")},
            headers=KEY,
            timeout=TIMEOUT_S,
        )

    def state(job_id: str) -> dict:
        return httpx.get(f"{url}/jobs/{job_id}", headers=KEY, timeout=TIMEOUT_S).json()

    long_jobs = [start(2000).json()["id"] for _ in range(2)]
    try:
        wait_for(
            lambda: all(state(j)["state"] == "running" for j in long_jobs),
            TIMEOUT_S,
            "both long jobs running",
            every_s=0.02,
        )
        for _ in range(4):
            accepted = start(64)
            assert accepted.status_code == 202, accepted.text
            running = [state(j)["state"] for j in long_jobs]
            assert running == ["running", "running"], running  # answered before they ended
            httpx.delete(f"{url}/jobs/{accepted.json()['id']}", headers=KEY)
    finally:
        for job_id in long_jobs:
            httpx.delete(f"{url}/jobs/{job_id}", headers=KEY)


def test_an_allowed_origin_may_delete_a_job_and_read_its_location_in_ray_mode(
    ray_service: RayService, celebs_root
):
    url = ray_service.url
    origin = DEFAULTS.cors_origins[0]
    preflight = httpx.options(
        f"{url}/jobs/0123456789abcdef01234567",
        headers={
            "Origin": origin,
            "Access-Control-Request-Method": "DELETE",
            "Access-Control-Request-Headers": "x-api-key",
        },
    )
    assert preflight.status_code == 200, preflight.text
    assert "DELETE" in preflight.headers["access-control-allow-methods"]

    made = httpx.post(
        f"{url}/jobs/gradient?detect=false",
        files={"file": ("face.png", face_png(celebs_root, "tom_hanks"), "image/png")},
        headers={**KEY, "Origin": origin},
        timeout=TIMEOUT_S,
    )
    assert made.status_code == 202, made.text
    exposed = [h.strip().lower() for h in made.headers["access-control-expose-headers"].split(",")]
    assert "location" in exposed
    deleted = httpx.delete(f"{url}{made.headers['location']}", headers={**KEY, "Origin": origin})
    assert deleted.status_code == 200
    assert deleted.headers["access-control-allow-origin"] == origin
