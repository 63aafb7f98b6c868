"""``service.client.api.Client`` against the session's app: predict and the method list as the
service answers them, and an explanation run as a job, followed on its event stream to the end
(a callback, and a tqdm bar), with the synchronous call's answer."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import pytest
from fastapi.testclient import TestClient

from service.client.api import Client, ServiceError
from tests.api.conftest import API_KEY

URL = "http://testserver"
LIME = {"num_samples": 64, "seed": 3, "stop": "fixed"}


@pytest.fixture
def api(client: TestClient) -> Client:
    return Client(URL, API_KEY, http=client)


def test_predict_is_the_services_answer(
    api: Client, held_out_faces: list[tuple[Path, str]], post_image: Callable[..., httpx.Response]
):
    photo = held_out_faces[5][0].read_bytes()

    answer = api.predict(photo)

    expected = post_image(photo).json()
    assert answer["label"] == expected["label"] == held_out_faces[5][1]
    assert answer["probabilities"] == expected["probabilities"]
    assert api.predict(photo, detect=False)["face_box"] != answer["face_box"]


def test_methods_are_get_explain_s(api: Client, client: TestClient):
    names = [method["name"] for method in api.methods()]

    listed = client.get("/explain", headers={"X-API-Key": API_KEY}).json()["methods"]
    assert names == [method["name"] for method in listed]
    assert {"gradient", "occlusion", "lime", "fastshap"} <= set(names)


def test_a_job_is_followed_to_its_end_and_answers_the_synchronous_map(
    api: Client, held_out_faces: list[tuple[Path, str]]
):
    photo = held_out_faces[2][0].read_bytes()
    events: list[dict[str, Any]] = []

    answer = api.explain_job(photo, "lime", LIME, progress=events.append)

    assert events and events[-1]["state"] == "done"
    progress = [event["progress"] for event in events]
    assert progress == sorted(progress) and progress[-1] == 1.0
    assert answer["heatmap"] == api.explain(photo, "lime", LIME)["heatmap"]
    assert answer["samples"]["used"] == 64


def test_a_jobs_progress_bar_runs_to_the_end(
    api: Client, held_out_faces: list[tuple[Path, str]], capsys: pytest.CaptureFixture[str]
):
    api.explain_job(held_out_faces[3][0].read_bytes(), "rise", {"num_masks": 64})

    assert "100/100" in capsys.readouterr().err


def test_a_refused_job_is_the_services_error(api: Client, held_out_faces: list[tuple[Path, str]]):
    photo = held_out_faces[0][0].read_bytes()

    with pytest.raises(ServiceError) as refused:
        api.explain_job(photo, "lime", {"num_samples": 3})

    assert refused.value.status == 422 and refused.value.code == "validation_error"
