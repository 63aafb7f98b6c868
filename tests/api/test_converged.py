"""stop=converged|fixed over HTTP on a real face: GET /explain lists it, the answer says how
many samples were used (JSON and PNG headers), the cache keeps the two apart, bad values are
422, and a job that stops early ends at 100 %."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
from fastapi.testclient import TestClient

from service.app import create_app
from service.explain import EXPLAINERS
from tests.api.conftest import API_KEY
from tests.api.job_polling import wait_for

STOPPING = ("smoothgrad", "integrated_gradients", "occlusion", "lime", "rise")
# Few superpixels: the halves of LIME's patterns agree early, and a 256 budget stops at the
# rule's minimum of 64 (one run, seeded: the same every time).
EARLY = {"num_samples": 256, "num_segments": 8, "detect": "false"}


def post(client: TestClient, method: str, face: bytes, **params: Any) -> Any:
    files = {"file": ("face.png", face, "image/png")}
    return client.post(f"/explain/{method}", params=params, files=files)


def test_get_explain_lists_stop_with_each_sampling_methods_default(client: TestClient) -> None:
    methods = {m["name"]: m for m in client.get("/explain").json()["methods"]}

    for name in STOPPING:
        stop = methods[name]["parameters"]["properties"]["stop"]
        assert stop["enum"] == ["converged", "fixed"], name
        assert stop["default"] == EXPLAINERS[name].Params().stop, name  # type: ignore[attr-defined]
    for name in ("gradient", "gradcam"):
        assert "stop" not in methods[name]["parameters"]["properties"]


def test_the_answer_says_how_many_samples_it_used(client: TestClient, face_bytes: bytes) -> None:
    converged = post(client, "lime", face_bytes, stop="converged", **EARLY)
    fixed = post(client, "lime", face_bytes, stop="fixed", **EARLY)
    again = post(client, "lime", face_bytes, stop="converged", **EARLY)
    png = post(client, "lime", face_bytes, stop="converged", format="png", **EARLY)

    assert converged.status_code == fixed.status_code == 200, converged.text
    assert converged.json()["samples"] == {"used": 64, "planned": 256, "stop": "converged"}
    assert fixed.json()["samples"] == {"used": 256, "planned": 256, "stop": "fixed"}
    assert converged.json()["parameters"]["stop"] == "converged"
    # stop is part of the cache key: the fixed map was computed, the repeat was not
    assert (converged.json()["cached"], fixed.json()["cached"]) == (False, False)
    assert again.json()["cached"] is True and again.json()["samples"]["used"] == 64
    assert converged.json()["heatmap"] != fixed.json()["heatmap"]
    assert png.headers["content-type"] == "image/png"
    assert (png.headers["x-samples-used"], png.headers["x-samples-planned"]) == ("64", "256")


def test_methods_without_samples_say_nothing_of_them(client: TestClient, face_bytes: bytes) -> None:
    answer = post(client, "gradient", face_bytes, detect="false")
    png = post(client, "gradient", face_bytes, detect="false", format="png")

    assert answer.json()["samples"] is None
    assert "x-samples-used" not in png.headers


@pytest.mark.parametrize(
    ("method", "params", "message"),
    [
        ("lime", {"stop": "sometimes"}, "'converged' or 'fixed'"),
        ("gradient", {"stop": "fixed"}, "stop"),
        (
            "integrated_gradients",
            {"stop": "converged", "quadrature": "riemann_trapezoid"},
            "quadrature applies to stop=fixed",
        ),
    ],
)
def test_a_bad_stop_is_422(
    client: TestClient, face_bytes: bytes, method: str, params: dict, message: str
) -> None:
    response = post(client, method, face_bytes, **params)

    assert response.status_code == 422
    error = response.json()["error"]
    assert error["code"] == "validation_error" and message in error["message"]


@pytest.fixture(scope="module")
def jobs(make_settings: Any) -> Iterator[TestClient]:
    settings = make_settings(job_event_interval_s=0.05)
    with TestClient(create_app(settings), headers={"X-API-Key": API_KEY}) as client:
        yield client


def test_a_job_that_stops_early_ends_at_full_progress(jobs: TestClient, face_bytes: bytes) -> None:
    files = {"file": ("face.png", face_bytes, "image/png")}
    started = jobs.post("/jobs/lime", params={**EARLY, "stop": "converged"}, files=files)
    assert started.status_code == 202, started.text

    done = wait_for(jobs, started.json()["id"], {"done", "failed", "cancelled"})

    assert done["state"] == "done", done
    assert done["progress"] == 1.0
    assert done["result"]["samples"] == {"used": 64, "planned": 256, "stop": "converged"}
