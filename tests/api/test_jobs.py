"""Jobs over HTTP: every method as a job, its events, cancel, limits, keys and bad input.

One app for the module with two API keys (``key-a``, ``key-b``), small job limits and a short
event interval; the model and data are the real ones.
"""

from __future__ import annotations

import dataclasses
import gc
import io
import json
import socket
import threading
import time
import weakref
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import httpx
import numpy as np
import pytest
import uvicorn
from fastapi.testclient import TestClient
from PIL import Image

from service import explanations
from service.api import deps
from service.api import jobs as job_routes
from service.app import create_app
from service.explain import EXPLAINERS
from service.http.connection_limits import ConnectionLimits, protocol_class
from service.intake.images import DecodedImage, decode_pixels
from service.jobs.store import JobView
from service.schemas.jobs import JobStatus
from tests.api.job_polling import batches, metric, wait_for
from tests.hostile.raw_http import request_head
from tests.load.harness import free_port
from tests.pacing import HeldPasses

KEY_A, KEY_B = "key-a", "key-b"
MAX_JOBS, MAX_JOBS_PER_KEY = 3, 2
# Small parameters: the life cycle, not the maps' quality, is under test.
SMALL: dict[str, str] = {
    "gradient": "",
    "smoothgrad": "samples=4",
    "integrated_gradients": "steps=8",
    "gradcam": "",
    "layercam": "",
    "occlusion": "window=48&stride=48",
    "lime": "num_samples=64",
    "rise": "num_masks=64",
    "fastshap": "",
}
LONG_LIME = "num_samples=2000&seed={seed}"  # 63 batches of 32


@pytest.fixture(scope="module")
def jobs(make_settings: Any) -> Iterator[TestClient]:
    settings = make_settings(
        api_key=f"{KEY_A},{KEY_B}",
        max_jobs=MAX_JOBS,
        max_jobs_per_key=MAX_JOBS_PER_KEY,
        job_event_interval_s=0.05,
    )
    with TestClient(create_app(settings), headers={"X-API-Key": KEY_A}) as client:
        yield client


def start(client: TestClient, method: str, query: str, face: bytes, **kwargs: Any) -> Any:
    files = {"file": ("face.png", face, "image/png")}
    return client.post(f"/jobs/{method}?detect=false&{query}", files=files, **kwargs)


def held_jobs(client: TestClient) -> int:
    lines = client.get("/metrics").text.splitlines()
    return int(sum(float(line.split()[1]) for line in lines if line.startswith("celebxai_jobs{")))


@pytest.mark.parametrize("method", list(EXPLAINERS))
def test_every_method_as_a_job_answers_as_the_synchronous_call(
    jobs: TestClient, face_bytes: bytes, method: str
) -> None:
    started = start(jobs, method, f"format=overlay&{SMALL[method]}", face_bytes)
    assert started.status_code == 202, started.text
    body = started.json()
    assert started.headers["location"] == f"/jobs/{body['id']}"
    assert body["state"] in {"queued", "running"} and body["method"] == method

    done = wait_for(jobs, body["id"], {"done", "failed", "cancelled"})
    assert done["state"] == "done", done
    assert done["progress"] == 1.0 and done["remaining_s"] == 0.0
    sync = jobs.post(
        f"/explain/{method}?detect=false&{SMALL[method]}",
        files={"file": ("face.png", face_bytes, "image/png")},
    )
    assert sync.status_code == 200
    expected = sync.json()
    result = jobs.get(f"/jobs/{body['id']}/result").json()
    assert result == done["result"]
    for field in ("method", "label", "target", "parameters", "heatmap", "face_box"):
        assert result[field] == expected[field], field
    png = jobs.get(f"/jobs/{body['id']}/result?format=overlay")
    sync_png = jobs.post(
        f"/explain/{method}?detect=false&format=overlay&{SMALL[method]}",
        files={"file": ("face.png", face_bytes, "image/png")},
    )
    assert png.headers["content-type"] == "image/png"
    assert png.content == sync_png.content
    # the job rendered what it was asked for, and nothing else
    not_asked = jobs.get(f"/jobs/{body['id']}/result?format=png")
    assert not_asked.status_code == 409
    assert not_asked.json()["error"]["code"] == "job_not_done"
    assert "overlay" in not_asked.json()["error"]["message"]


def test_a_synthesis_runs_as_a_job(jobs: TestClient) -> None:
    started = jobs.post("/jobs/maximize?class=tom_hanks&steps=6&seed=1")
    assert started.status_code == 202, started.text
    done = wait_for(jobs, started.json()["id"], {"done", "failed", "cancelled"})
    assert done["state"] == "done", done
    assert done["result"]["steps"] == 6 and done["result"]["objective"] == "class tom_hanks"
    png = jobs.get(f"/jobs/{done['id']}/result?format=png")
    assert png.content.startswith(b"\x89PNG")
    assert jobs.get(f"/jobs/{done['id']}/result?format=overlay").json()["error"]["code"] == (
        "job_not_done"
    )


EVENTFUL = {
    "lime": "num_samples=512&seed=5",
    "occlusion": "",
    "rise": "num_masks=512",
    "smoothgrad": "samples=32&stop=fixed",  # converged may stop after one batch of 8
    "integrated_gradients": "steps=64",
}


CARRY_TIMEOUT_S = 120.0


class CarriedMaps:
    """The partial maps the event stream has carried to the test, and how many maps the work
    stopped waiting for before one was."""

    def __init__(self) -> None:
        self.seen: list[list[list[float]]] = []  # each map's values, once per change
        self.missed = 0
        self.changed = threading.Condition()

    def saw(self, heatmap: dict[str, Any]) -> None:
        with self.changed:
            if not self.seen or heatmap["values"] != self.seen[-1]:
                self.seen.append(heatmap["values"])
                self.changed.notify_all()

    def wait_for(self, heatmap: dict[str, Any]) -> None:
        def carried() -> bool:  # the newest first: the map waited for is usually the last seen
            return any(values == heatmap["values"] for values in reversed(self.seen))

        with self.changed:
            if not self.changed.wait_for(carried, CARRY_TIMEOUT_S):
                self.missed += 1


@pytest.fixture
def paced_maps(monkeypatch: pytest.MonkeyPatch) -> CarriedMaps:
    """The test sets the pace of a job's partial maps, so that what the events carry does not
    depend on how fast the CPU computes them: every map the work reports is published (the work
    first waits out the event interval, within which the service would drop it), and the work
    then waits, on its own thread, until the event stream has carried that map to the test."""
    carried = CarriedMaps()

    class PacedMaps(explanations.PartialMaps):
        def __init__(self, *args: Any) -> None:
            super().__init__(*args)
            publish = self.publish

            def publish_and_wait(changes: dict[str, Any]) -> None:
                publish(changes)
                carried.wait_for(changes["partial"])

            self.publish = publish_and_wait

        def report(self, values: np.ndarray, scale: float, negligible: bool) -> None:
            while (wait := self.last + self.interval - time.monotonic()) > 0:
                time.sleep(wait)
            super().report(values, scale, negligible)

    monkeypatch.setattr(explanations, "PartialMaps", PacedMaps)
    return carried


@pytest.mark.parametrize("method", list(EVENTFUL))
def test_events_report_rising_progress_and_a_refining_map_then_the_end(
    jobs: TestClient, face_bytes: bytes, method: str, paced_maps: CarriedMaps
) -> None:
    query = EVENTFUL[method]
    job_id = start(jobs, method, query, face_bytes).json()["id"]
    events = []
    with jobs.stream("GET", f"/jobs/{job_id}/events") as stream:
        assert stream.headers["content-type"].startswith("text/event-stream")
        for line in stream.iter_lines():
            if line.startswith("data:"):
                events.append(json.loads(line.removeprefix("data:")))
                if "heatmap" in events[-1]:
                    paced_maps.saw(events[-1]["heatmap"])
    assert paced_maps.missed == 0, f"{paced_maps.missed} partial maps never reached the test"
    assert events[-1]["state"] == "done" and events[-1]["progress"] == 1.0
    running = [event["progress"] for event in events if event["state"] == "running"]
    assert len(running) >= 2, events
    assert running == sorted(running) and 0 <= running[0] < running[-1] < 1
    maps = [event["heatmap"] for event in events if "heatmap" in event]
    assert "heatmap" not in events[-1]  # the final map is the result's
    changed = sum(a["values"] != b["values"] for a, b in zip(maps, maps[1:], strict=False))
    assert changed >= 2, f"{len(maps)} partial maps, {changed} changes"
    final = jobs.get(f"/jobs/{job_id}").json()["result"]["heatmap"]
    for partial in maps:  # the synchronous grid's shape and description
        assert (partial["width"], partial["height"]) == (final["width"], final["height"])
        assert partial["signed"] == final["signed"] and partial["units"] == final["units"]


def test_delete_stops_the_work_within_a_batch(
    jobs: TestClient, face_bytes: bytes, hold_passes: Callable[[int], HeldPasses]
) -> None:
    held = hold_passes(3)  # two passes done, the third waits for the DELETE
    job_id = start(jobs, "lime", LONG_LIME.format(seed=11), face_bytes).json()["id"]
    held.wait_until_reached()
    status = wait_for(jobs, job_id, {"running"})
    while status["progress"] == 0:
        status = jobs.get(f"/jobs/{job_id}").json()
    deleted = jobs.delete(f"/jobs/{job_id}")
    assert deleted.status_code == 200
    at_cancel = batches(jobs)
    cancelled = wait_for(jobs, job_id, {"done", "failed", "cancelled"})
    assert cancelled["state"] == "cancelled", cancelled
    assert cancelled["error"]["code"] == "cancelled"
    assert cancelled["progress"] < 0.5
    time.sleep(0.5)
    assert batches(jobs) - at_cancel <= 1  # at most the batch in flight finished
    assert jobs.get(f"/jobs/{job_id}/result").json()["error"]["code"] == "job_not_done"
    # a finished job is forgotten by DELETE
    assert jobs.delete(f"/jobs/{job_id}").status_code == 200
    assert jobs.get(f"/jobs/{job_id}").json()["error"]["code"] == "unknown_job"


def test_limits_per_key_and_in_all_then_room_again(
    jobs: TestClient, face_bytes: bytes, hold_passes: Callable[[int], HeldPasses]
) -> None:
    hold_passes(1)  # the jobs stay unfinished until they are deleted
    made = [start(jobs, "lime", LONG_LIME.format(seed=s), face_bytes) for s in (21, 22)]
    assert [r.status_code for r in made] == [202, 202]
    refused = start(jobs, "lime", LONG_LIME.format(seed=23), face_bytes)
    assert refused.status_code == 429 and refused.json()["error"]["code"] == "too_many_jobs"
    assert "Retry-After" in refused.headers
    other = start(jobs, "lime", LONG_LIME.format(seed=24), face_bytes, headers={"X-API-Key": KEY_B})
    assert other.status_code == 202  # its own key's first job; the third in all
    full = start(jobs, "lime", LONG_LIME.format(seed=25), face_bytes, headers={"X-API-Key": KEY_B})
    assert full.status_code == 429 and "queued or running" in full.json()["error"]["message"]
    # the two turns are taken: key-b's job waits its turn, and can be cancelled while queued
    queued = jobs.get(f"/jobs/{other.json()['id']}", headers={"X-API-Key": KEY_B}).json()
    assert queued["state"] == "queued" and queued["elapsed_s"] == 0
    # the queued job first, and to its end: a turn freed before it would start it
    for response, key in [(other, KEY_B), (made[0], KEY_A), (made[1], KEY_A)]:
        headers = {"X-API-Key": key}
        jobs.delete(f"/jobs/{response.json()['id']}", headers=headers)
        deadline = time.monotonic() + 300
        while jobs.get(f"/jobs/{response.json()['id']}", headers=headers).json()["state"] not in {
            "cancelled",
            "done",
        }:
            assert time.monotonic() < deadline
            time.sleep(0.05)
    never_ran = jobs.get(f"/jobs/{other.json()['id']}", headers={"X-API-Key": KEY_B}).json()
    assert never_ran["state"] == "cancelled" and never_ran["elapsed_s"] == 0
    again = start(jobs, "gradient", "", face_bytes)
    assert again.status_code == 202


def test_a_job_is_visible_only_with_the_key_that_made_it(
    jobs: TestClient, face_bytes: bytes
) -> None:
    job_id = start(jobs, "gradcam", "", face_bytes).json()["id"]
    for path in (f"/jobs/{job_id}", f"/jobs/{job_id}/result", f"/jobs/{job_id}/events"):
        other = jobs.get(path, headers={"X-API-Key": KEY_B})
        assert other.status_code == 404 and other.json()["error"]["code"] == "unknown_job"
        assert jobs.get(path, headers={"X-API-Key": ""}).status_code == 401
        assert jobs.get(path, headers={"X-API-Key": "key-c"}).status_code == 401
    assert jobs.delete(f"/jobs/{job_id}", headers={"X-API-Key": KEY_B}).status_code == 404
    assert wait_for(jobs, job_id, {"done"})["state"] == "done"


@pytest.mark.parametrize(
    ("path", "upload", "status", "code"),
    [
        ("/jobs/nonsense", "face", 404, "unknown_method"),
        ("/jobs/lime?num_samples=5", "face", 422, "validation_error"),
        ("/jobs/lime?window=24", "face", 422, "validation_error"),
        ("/jobs/occlusion?window=8&stride=16", "face", 422, "validation_error"),
        ("/jobs/gradient?target=nobody", "face", 422, "unknown_class"),
        ("/jobs/gradient", "empty", 400, "empty_file"),
        ("/jobs/gradient", "corrupt", 400, "corrupt_image"),
        ("/jobs/gradient", "text", 415, "unsupported_format"),
        ("/jobs/gradient", None, 422, "validation_error"),
        ("/jobs/maximize?class=nobody", None, 422, "unknown_class"),
        ("/jobs/maximize?layer=layer9&channel=0", None, 422, "unknown_layer"),
        ("/jobs/maximize", None, 422, "validation_error"),
    ],
)
def test_bad_requests_are_refused_before_any_job_is_made(
    jobs: TestClient, face_bytes: bytes, path: str, upload: str | None, status: int, code: str
) -> None:
    uploads = {
        "face": face_bytes,
        "empty": b"",
        "corrupt": face_bytes[: len(face_bytes) // 3],
        "text": b"hello, this is not an image\n" * 10,
    }
    before = held_jobs(jobs)
    files = None if upload is None else {"file": ("x.png", uploads[upload], "image/png")}
    separator = "&" if "?" in path else "?"
    response = jobs.post(f"{path}{separator}detect=false", files=files)
    assert response.status_code == status, response.text
    assert response.json()["error"]["code"] == code
    assert held_jobs(jobs) == before


def test_unknown_ids_and_unfinished_results(
    jobs: TestClient, face_bytes: bytes, hold_passes: Callable[[int], HeldPasses]
) -> None:
    hold_passes(1)  # the job stays unfinished until it is deleted
    assert jobs.get("/jobs/no-such-job").json()["error"]["code"] == "unknown_job"
    assert jobs.get("/jobs/no-such-job/events").status_code == 404
    assert jobs.delete("/jobs/no-such-job").status_code == 404
    job_id = start(jobs, "lime", LONG_LIME.format(seed=31), face_bytes).json()["id"]
    early = jobs.get(f"/jobs/{job_id}/result")
    assert early.status_code == 409 and early.json()["error"]["code"] == "job_not_done"
    jobs.delete(f"/jobs/{job_id}")
    assert wait_for(jobs, job_id, {"cancelled"})["state"] == "cancelled"


@pytest.mark.parametrize("fmt", ["json", "overlay"])
def test_a_waiting_job_holds_no_decoded_image(
    jobs: TestClient,
    face_bytes: bytes,
    fmt: str,
    hold_passes: Callable[[int], HeldPasses],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """What a job keeps while it waits is its model input and the upload's facts (an overlay
    job: the compressed upload too), never the decoded upload: every decoded image of the
    request is gone once the 202 is answered, and its pixels are back in the budget."""
    decoded: list[weakref.ref[Any]] = []

    def recorded(*args: Any) -> DecodedImage:
        image = decode_pixels(*args)
        decoded.extend([weakref.ref(image), weakref.ref(image.rgb)])
        return image

    monkeypatch.setattr(deps, "decode_pixels", recorded)
    held = hold_passes(2)
    job_id = start(jobs, "lime", f"format={fmt}&" + LONG_LIME.format(seed=51), face_bytes).json()[
        "id"
    ]
    held.wait_until_reached()  # running, between its passes
    gc.collect()
    assert decoded and all(ref() is None for ref in decoded)
    assert pixels_in_use(jobs) == 0
    jobs.delete(f"/jobs/{job_id}")
    assert wait_for(jobs, job_id, {"cancelled"})["state"] == "cancelled"


def test_a_status_splices_the_stored_result_bytes_in_as_they_are() -> None:
    """Polling a finished job copies its result's bytes into the status; nothing re-serialises
    them (a 256x256 heatmap took 31.5 ms of the event loop per poll)."""
    stored = b'{"label":"x","heatmap":{"values":[[0.5,1.0]]},"note":"\\u00e9 \\"q\\""}'
    view = JobView(
        id="j",
        method="lime",
        parameters={"num_samples": 64},
        state="done",
        progress=1.0,
        created_at=1.0,
        queue_wait_s=0.0,
        elapsed_s=2.0,
        remaining_s=0.0,
        error=None,
        result_json=stored,
        summary={},
        partial=None,
        version=3,
        cancel_requested=False,
    )
    body = job_routes.status_json(view)
    assert body.endswith(b',"result":' + stored + b"}")
    status = JobStatus.model_validate_json(body)
    assert status.result == json.loads(stored) and status.state == "done"
    queued = job_routes.status_json(dataclasses.replace(view, state="queued", result_json=None))
    assert json.loads(queued)["result"] is None


def pixels_in_use(client: TestClient) -> float:
    return metric(client, "celebxai_decode_pixels_in_use")


def test_an_overlay_job_renders_inside_the_pixel_budget(
    jobs: TestClient, face_bytes: bytes, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The render decodes the upload again while holding its pixels, and gives them back."""
    held_during_render: list[float] = []
    render = job_routes.render_png

    def watched(*args: Any) -> bytes:
        state = jobs.app.state.service  # type: ignore[attr-defined]
        held_during_render.append(state.decodes.in_use)
        return render(*args)

    monkeypatch.setattr(job_routes, "render_png", watched)
    job_id = start(jobs, "gradcam", "format=overlay", face_bytes).json()["id"]
    assert wait_for(jobs, job_id, {"done", "failed"})["state"] == "done"
    width, height = Image.open(io.BytesIO(face_bytes)).size
    assert held_during_render == [width * height]
    assert pixels_in_use(jobs) == 0


# --- event streams over a real connection ---------------------------------------------------
# The test client runs an app to its end before it answers, so streams that stay open, readers
# that never read and hang-ups need a real server: uvicorn in a thread of this process, with the
# service's own connection protocol (``python -m service`` serves the same), so the test can
# hold the jobs' work still (``hold_passes``) while streams are open.
STREAMS_PER_JOB, STREAMS_PER_KEY = 3, 4
WRITE_TIMEOUT_S = 1.0


@dataclass
class Served:
    url: str

    def headers(self, key: str = KEY_A) -> dict[str, str]:
        return {"X-API-Key": key}

    def metric(self, name: str, **labels: str) -> float:
        for line in httpx.get(f"{self.url}/metrics").text.splitlines():
            wanted = name + ("{" + ",".join(f'{k}="{v}"' for k, v in labels.items()) + "}")
            if line.startswith(wanted if labels else name + " "):
                return float(line.split()[-1])
        return 0.0


@pytest.fixture(scope="module")
def served(make_settings: Any) -> Iterator[Served]:
    settings = make_settings(
        api_key=f"{KEY_A},{KEY_B}",
        max_jobs=MAX_JOBS,
        max_jobs_per_key=MAX_JOBS_PER_KEY,
        job_event_interval_s=0.05,
        job_streams_per_job=STREAMS_PER_JOB,
        job_streams_per_key=STREAMS_PER_KEY,
        write_timeout_s=WRITE_TIMEOUT_S,
    )
    app = create_app(settings)
    closed = app.state.connections_closed
    port = free_port()
    config = uvicorn.Config(
        app,
        host="127.0.0.1",
        port=port,
        log_level="warning",
        http=protocol_class(
            ConnectionLimits.from_settings(settings),
            on_refused=lambda reason: closed.labels(reason=reason).inc(),
        ),
    )
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 120
    while not server.started:
        assert time.monotonic() < deadline and thread.is_alive(), "the server did not start"
        time.sleep(0.05)
    try:
        yield Served(f"http://127.0.0.1:{port}")
    finally:
        server.should_exit = True
        thread.join(30)


def start_on(served: Served, query: str, face: bytes, key: str = KEY_A) -> str:
    files = {"file": ("face.png", face, "image/png")}
    response = httpx.post(
        f"{served.url}/jobs/lime?detect=false&{query}",
        files=files,
        headers=served.headers(key),
        timeout=60,
    )
    assert response.status_code == 202, response.text
    return str(response.json()["id"])


class Reader(threading.Thread):
    """One client reading a job's event stream to its end."""

    def __init__(self, served: Served, job_id: str, key: str = KEY_A) -> None:
        super().__init__(daemon=True)
        self.url, self.headers = f"{served.url}/jobs/{job_id}/events", served.headers(key)
        self.status: int | None = None
        self.events: list[dict[str, Any]] = []
        self.opened = threading.Event()
        self.start()

    def run(self) -> None:
        with httpx.stream("GET", self.url, headers=self.headers, timeout=60) as stream:
            self.status = stream.status_code
            self.opened.set()
            for line in stream.iter_lines():
                if line.startswith("data:"):
                    self.events.append(json.loads(line.removeprefix("data:")))

    def ended(self) -> list[dict[str, Any]]:
        self.join(60)
        assert not self.is_alive(), "the stream did not end"
        return self.events


def wait_until(condition: Callable[[], bool], timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "condition not met in time"
        time.sleep(0.02)


@pytest.mark.slow
def test_a_second_delete_during_streams_ends_them_with_a_final_event(
    served: Served,
    face_bytes: bytes,
    hold_passes: Callable[[int], HeldPasses],
    caplog: pytest.LogCaptureFixture,
) -> None:
    held = hold_passes(2)
    job_id = start_on(served, LONG_LIME.format(seed=41), face_bytes)
    held.wait_until_reached()
    readers = [Reader(served, job_id) for _ in range(STREAMS_PER_JOB)]
    wait_until(lambda: served.metric("celebxai_job_event_streams") == STREAMS_PER_JOB)
    url, headers = f"{served.url}/jobs/{job_id}", served.headers()
    assert httpx.delete(url, headers=headers).status_code == 200  # cancel
    wait_until(lambda: httpx.get(url, headers=headers).json()["state"] == "cancelled")
    assert httpx.delete(url, headers=headers).status_code == 200  # forget
    assert httpx.get(url, headers=headers).status_code == 404
    for reader in readers:
        events = reader.ended()
        assert reader.status == 200
        assert events[-1]["state"] in {"cancelled", "gone"}, events
        assert events[-1]["error"]["code"] in {"cancelled", "unknown_job"}
    wait_until(lambda: served.metric("celebxai_job_event_streams") == 0)
    assert not [r for r in caplog.records if r.levelname in ("ERROR", "CRITICAL")]
    gone = httpx.get(f"{url}/events", headers=headers)
    assert gone.status_code == 404 and gone.json()["error"]["code"] == "unknown_job"


@pytest.mark.slow
def test_open_streams_are_capped_per_job_and_per_key(
    served: Served, face_bytes: bytes, hold_passes: Callable[[int], HeldPasses]
) -> None:
    held = hold_passes(2)
    first = start_on(served, LONG_LIME.format(seed=42), face_bytes)
    second = start_on(served, LONG_LIME.format(seed=43), face_bytes)
    held.wait_until_reached()
    readers = [Reader(served, first) for _ in range(STREAMS_PER_JOB)]
    wait_until(lambda: served.metric("celebxai_job_event_streams") == STREAMS_PER_JOB)
    refused = httpx.get(f"{served.url}/jobs/{first}/events", headers=served.headers())
    assert refused.status_code == 429, refused.text
    assert refused.json()["error"]["code"] == "too_many_streams"
    assert "on job" in refused.json()["error"]["message"] and "Retry-After" in refused.headers
    readers.append(Reader(served, second))  # the key's fourth: its last
    wait_until(lambda: served.metric("celebxai_job_event_streams") == STREAMS_PER_KEY)
    over = httpx.get(f"{served.url}/jobs/{second}/events", headers=served.headers())
    assert over.status_code == 429 and "this API key" in over.json()["error"]["message"]
    for job_id in (first, second):
        httpx.delete(f"{served.url}/jobs/{job_id}", headers=served.headers())
    for reader in readers:
        assert reader.status == 200 and reader.ended()[-1]["state"] == "cancelled"
    wait_until(lambda: served.metric("celebxai_job_event_streams") == 0)


def never_reading_stream(served: Served, job_id: str) -> socket.socket:
    """A connection asking for the job's events with a tiny receive buffer, never read."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)  # before connect: the window
    sock.connect(("127.0.0.1", int(served.url.rsplit(":", 1)[1])))
    sock.sendall(request_head("GET", f"/jobs/{job_id}/events", served.headers()))
    return sock


class EveryMap(explanations.PartialMaps):
    """Publishes every map the work reports, each after waiting out the event interval (the
    service would drop maps within it): how much a stream carries does not depend on how fast
    the CPU computes them."""

    def report(self, values: np.ndarray, scale: float, negligible: bool) -> None:
        while (wait := self.last + self.interval - time.monotonic()) > 0:
            time.sleep(wait)
        super().report(values, scale, negligible)


@pytest.mark.slow
def test_a_reader_that_never_reads_is_dropped_and_does_not_hold_the_job(
    served: Served,
    face_bytes: bytes,
    hold_passes: Callable[[int], HeldPasses],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(explanations, "PartialMaps", EveryMap)
    # 256 x 256: each partial map is a 256 x 256 grid, ~0.5 MB of JSON; 63 of them fill every
    # buffer between the service and a reader that takes nothing
    large = io.BytesIO()
    Image.open(io.BytesIO(face_bytes)).resize((256, 256)).save(large, format="PNG")
    held = hold_passes(2)  # until both streams are open
    job_id = start_on(served, "num_samples=2000&seed=44", large.getvalue())
    held.wait_until_reached()
    silent = never_reading_stream(served, job_id)
    try:
        reader = Reader(served, job_id)  # a reader that reads, beside it
        wait_until(lambda: served.metric("celebxai_job_event_streams") == 2)
        held.ended.set()
        events = reader.ended()  # the job runs to its end, whatever the silent one does
        assert events[-1]["state"] == "done"
        assert sum("heatmap" in event for event in events) >= 10
        # the silent reader's connection is dropped write_timeout_s after its writes stalled,
        # which gives back its place among the streams
        wait_until(lambda: served.metric("celebxai_job_event_streams") == 0, timeout=30)
        dropped = served.metric("celebxai_connections_closed_total", reason="write_timeout")
        assert dropped >= 1
    finally:
        silent.close()


def test_head_of_a_running_jobs_events_answers_at_once_and_holds_no_stream(
    served: Served, face_bytes: bytes, hold_passes: Callable[[int], HeldPasses]
) -> None:
    """HEAD of the event stream answers with the stream's headers while the job runs, and
    takes none of the job's places among streams (it used to wait for the job's end, holding
    one: eight of them made a real reader 429)."""
    held = hold_passes(2)  # the job waits before its 2nd pass until the test lets it go
    job_id = start_on(served, "num_samples=64&seed=46", face_bytes)
    held.wait_until_reached()
    try:
        # one kept-alive connection, as a monitoring client's: each HEAD must end before the next
        with httpx.Client(headers=served.headers(), timeout=10) as client:
            heads = [client.head(f"{served.url}/jobs/{job_id}/events") for _ in range(9)]
        for head in heads:  # more than the job's places (8)
            assert head.status_code == 200
            assert head.content == b""
            assert head.headers["content-type"].startswith("text/event-stream")
            assert head.headers["cache-control"] == "no-cache"
        assert served.metric("celebxai_job_event_streams") == 0
        status = httpx.get(f"{served.url}/jobs/{job_id}", headers=served.headers(), timeout=10)
        assert status.json()["state"] == "running"  # all of it while the job was held
        unknown = httpx.head(f"{served.url}/jobs/nope/events", headers=served.headers())
        assert unknown.status_code == 404
    finally:
        held.ended.set()
        httpx.delete(f"{served.url}/jobs/{job_id}", headers=served.headers(), timeout=10)
