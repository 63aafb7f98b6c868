"""Jobs on ``python -m service --ray``: made and run by an Explain replica, read, streamed and
deleted through the gateway, the records on the shared ``JobBoard``; the final answer is the
single-process service's.
"""

from __future__ import annotations

import json
import time

import httpx
import pytest

from service.scaleout.metrics_merge import PUBLISH_EVERY_S
from tests.hostile.hang_up import explanation_batches, wait_for
from tests.image_bytes import face_png
from tests.scaleout.conftest import API_KEY, RayService, Service
from tests.scaleout.test_api_parity import _same, _stable

# the single-process and Ray services of the session (tests/scaleout/conftest.py)
pytestmark = pytest.mark.ray

KEY = {"X-API-Key": API_KEY}
TIMEOUT_S = 180.0


def _start(url: str, face: bytes, params: str) -> httpx.Response:
    return httpx.post(
        f"{url}/jobs/lime?detect=false&{params}",
        files={"file": ("face.png", face, "image/png")},
        headers=KEY,
        timeout=TIMEOUT_S,
    )


def _events(url: str, job_id: str) -> list[dict]:
    events = []
    with httpx.stream("GET", f"{url}/jobs/{job_id}/events", headers=KEY, timeout=TIMEOUT_S) as s:
        assert s.headers["content-type"].startswith("text/event-stream")
        for line in s.iter_lines():
            if line.startswith("data:"):
                events.append(json.loads(line.removeprefix("data:")))
    return events


def test_a_job_streams_its_progress_and_answers_as_the_single_process(
    single_service: Service, ray_service: RayService, celebs_root
):
    face = face_png(celebs_root, "tom_hanks")
    results = {}
    for host, service in {"single": single_service, "ray": ray_service}.items():
        started = _start(service.url, face, "num_samples=384&seed=7&format=overlay")
        assert started.status_code == 202, (host, started.text)
        job_id = started.json()["id"]
        assert started.headers["location"] == f"/jobs/{job_id}"
        events = _events(service.url, job_id)
        assert events[-1]["state"] == "done", (host, events[-3:])
        running = [e["progress"] for e in events if e["state"] == "running"]
        assert len(running) >= 2 and running == sorted(running), (host, events)
        status = httpx.get(f"{service.url}/jobs/{job_id}", headers=KEY).json()
        assert status["state"] == "done" and status["progress"] == 1.0
        results[host] = _stable(status["result"])
        overlay = httpx.get(f"{service.url}/jobs/{job_id}/result?format=overlay", headers=KEY)
        assert overlay.headers["content-type"] == "image/png" and overlay.content
    assert _same(results["single"], results["ray"]) == []


def test_delete_in_ray_mode_stops_the_replica_within_a_batch(ray_service: RayService, celebs_root):
    url = ray_service.url
    face = face_png(celebs_root, "keanu_reeves")
    job_id = _start(url, face, "num_samples=2000&seed=9").json()["id"]
    wait_for(  # asked every 20 ms: deleted as soon as it runs, long before half of it is done
        lambda: httpx.get(f"{url}/jobs/{job_id}", headers=KEY).json()["progress"] > 0,
        TIMEOUT_S,
        "the job running",
        every_s=0.02,
    )
    deleted = httpx.delete(f"{url}/jobs/{job_id}", headers=KEY)
    assert deleted.status_code == 200
    wait_for(
        lambda: httpx.get(f"{url}/jobs/{job_id}", headers=KEY).json()["state"] == "cancelled",
        TIMEOUT_S,
        "the job cancelled",
    )
    cancelled = httpx.get(f"{url}/jobs/{job_id}", headers=KEY).json()
    assert cancelled["progress"] < 0.5 and cancelled["error"]["code"] == "cancelled"
    time.sleep(2 * PUBLISH_EVERY_S)  # every replica has published since
    stopped_at = explanation_batches(url)
    time.sleep(2 * PUBLISH_EVERY_S)
    assert explanation_batches(url) == stopped_at
    gone = httpx.get(f"{url}/jobs/{job_id}/result", headers=KEY)
    assert gone.status_code == 409 and gone.json()["error"]["code"] == "job_not_done"
    counts = {
        line.split()[0]: float(line.split()[1])
        for line in httpx.get(f"{url}/metrics").text.splitlines()
        if line.startswith("celebxai_jobs_finished_total{")
    }
    assert any('state="cancelled"' in name and value >= 1 for name, value in counts.items())
