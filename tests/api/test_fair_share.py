"""Fair sharing: jobs yield to synchronous explanations, jobs are limited per client without API
keys, the explanation cache is per key, one request's cost is bounded, and a job refuses what the
synchronous call refuses, the same way.

Work is paced by the test (``hold_passes``), never by the clock: what is asserted is the order in
which things happen, not how fast.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from fastapi.testclient import TestClient
from httpx import Response

from service.app import create_app
from service.explain import EXPLAINERS
from service.settings import Settings
from tests.api.job_polling import batches, wait_for
from tests.pacing import HeldPasses

KEY_A, KEY_B = "key-a", "key-b"
LIME = "num_samples=256&seed=5"  # 9 passes
JOIN_S = 120.0


@pytest.fixture(scope="module")
def keyed(make_settings: Callable[..., Settings]) -> Iterator[TestClient]:
    """Two API keys, one explanation turn: a job and a synchronous call contend for it."""
    settings = make_settings(api_key=f"{KEY_A},{KEY_B}", max_explanations=1)
    with TestClient(create_app(settings), headers={"X-API-Key": KEY_A}) as client:
        yield client


@pytest.fixture(scope="module")
def keyless(make_settings: Callable[..., Settings]) -> Iterator[TestClient]:
    """No API key; one job per client; at most 16 passes per request."""
    settings = make_settings(
        api_key=None, max_jobs=4, max_jobs_per_key=1, max_passes_per_request=16
    )
    with TestClient(create_app(settings)) as client:
        yield client


def post(
    client: TestClient, path: str, face: bytes, key: str | None = None, **kwargs: Any
) -> Response:
    headers = {} if key is None else {"X-API-Key": key}
    separator = "&" if "?" in path else "?"
    files = {"file": ("face.png", face, "image/png")}
    return client.post(f"{path}{separator}detect=false", files=files, headers=headers, **kwargs)


def in_thread(call: Callable[[], Response]) -> tuple[threading.Thread, dict[str, Response]]:
    answer: dict[str, Response] = {}
    thread = threading.Thread(target=lambda: answer.setdefault("response", call()))
    thread.start()
    return thread, answer


def test_a_synchronous_explanation_waits_at_most_one_job_batch(
    keyed: TestClient, face_bytes: bytes, hold_passes: Callable[[int], HeldPasses]
) -> None:
    gate = keyed.app.state.service.explanations
    first = hold_passes(3)  # the job holds the one turn, before its 3rd pass
    job = post(keyed, f"/jobs/lime?{LIME}", face_bytes)
    assert job.status_code == 202, job.text
    job_id = job.json()["id"]
    first.wait_until_reached()
    later = hold_passes(6)  # after giving way, the job stops again before its 6th pass

    thread, answer = in_thread(lambda: post(keyed, "/explain/gradient", face_bytes))
    deadline = time.monotonic() + JOIN_S
    while not gate.interactive_waiting:
        assert time.monotonic() < deadline, "the synchronous explanation never queued"
        time.sleep(0.01)
    assert gate.interactive_waiting == 1
    assert thread.is_alive()  # the held job has the turn
    first.ended.set()  # the job runs its 3rd pass; at its 4th it gives its turn away
    thread.join(JOIN_S)
    assert not thread.is_alive(), "the synchronous explanation never got a turn"
    assert answer["response"].status_code == 200
    later.wait_until_reached()  # the job took its turn back and went on
    assert keyed.get(f"/jobs/{job_id}").json()["state"] == "running"

    later.ended.set()
    done = wait_for(keyed, job_id, {"done", "failed", "cancelled"}, JOIN_S)
    assert done["state"] == "done", done
    # giving way changes when the job runs, never what it answers
    sync = post(keyed, f"/explain/lime?{LIME}", face_bytes).json()
    assert done["result"]["heatmap"] == sync["heatmap"]


def test_a_job_inside_the_twin_runs_on_rather_than_give_way_to_a_call_waiting_for_the_twin(
    keyed: TestClient, face_bytes: bytes, hold_passes: Callable[[int], HeldPasses]
) -> None:
    """A SmoothGrad job holds the twin for all its samples. Were it to give its turn away
    there, the synchronous gradient call taking the turn would wait for the twin the paused
    job keeps, and the job for a turn the call keeps: neither would ever finish."""
    gate = keyed.app.state.service.explanations
    held = hold_passes(2)  # the job holds the turn and the twin, before its 2nd of 4 passes
    job = post(keyed, "/jobs/smoothgrad?samples=16&batch_size=4", face_bytes)
    assert job.status_code == 202, job.text
    held.wait_until_reached()

    thread, answer = in_thread(
        lambda: post(keyed, "/explain/gradient?target=halle_berry", face_bytes)
    )
    deadline = time.monotonic() + JOIN_S
    while not gate.interactive_waiting:
        assert time.monotonic() < deadline, "the synchronous explanation never queued"
        time.sleep(0.01)
    held.ended.set()  # the job's 3rd pass comes while the call waits: it runs on
    done = wait_for(keyed, job.json()["id"], {"done", "failed", "cancelled"}, JOIN_S)
    assert done["state"] == "done", done
    thread.join(JOIN_S)
    assert not thread.is_alive(), "the synchronous explanation never finished"
    assert answer["response"].status_code == 200, answer["response"].text


def test_the_explanation_cache_is_per_api_key(keyed: TestClient, face_bytes: bytes) -> None:
    path = "/explain/gradient?target=tom_hanks"
    first = post(keyed, path, face_bytes, key=KEY_A).json()
    again = post(keyed, path, face_bytes, key=KEY_A).json()
    other = post(keyed, path, face_bytes, key=KEY_B).json()
    other_again = post(keyed, path, face_bytes, key=KEY_B).json()
    assert [first["cached"], again["cached"]] == [False, True]
    assert [other["cached"], other_again["cached"]] == [False, True]  # B learns nothing of A
    assert other["heatmap"] == first["heatmap"]


def test_without_keys_the_explanation_cache_is_shared(
    keyless: TestClient, face_bytes: bytes
) -> None:
    path = "/explain/gradient?target=keanu_reeves"
    first = post(keyless, path, face_bytes, key="made-up-1").json()
    second = post(keyless, path, face_bytes, key="made-up-2").json()
    assert [first["cached"], second["cached"]] == [False, True]


def test_without_keys_jobs_are_limited_per_client_address(
    keyless: TestClient, face_bytes: bytes, hold_passes: Callable[[int], HeldPasses]
) -> None:
    hold_passes(2)  # jobs stay unfinished until deleted
    mine = post(keyless, f"/jobs/lime?{LIME}", face_bytes, key="made-up-1")
    assert mine.status_code == 202, mine.text
    job_id = mine.json()["id"]
    refused = post(keyless, f"/jobs/lime?{LIME}", face_bytes, key="made-up-2")
    assert refused.status_code == 429
    assert refused.json()["error"]["code"] == "too_many_jobs"

    elsewhere = TestClient(keyless.app, client=("192.0.2.7", 40000))
    elsewhere.portal = keyless.portal  # the running app's event loop, where its jobs run
    theirs = post(elsewhere, f"/jobs/lime?{LIME}", face_bytes)
    assert theirs.status_code == 202, theirs.text
    assert elsewhere.get(f"/jobs/{job_id}").status_code == 404  # not their job
    for client, made in ((keyless, mine), (elsewhere, theirs)):
        assert client.delete(f"/jobs/{made.json()['id']}").status_code == 200
        wait_for(client, made.json()["id"], {"cancelled"}, JOIN_S)


def test_a_request_over_the_pass_limit_is_refused_before_any_work(
    keyed: TestClient, face_bytes: bytes
) -> None:
    passes_before = batches(keyed)
    for path in ("/explain/rise?num_masks=4000", "/jobs/rise?num_masks=4000"):
        response = post(keyed, path, face_bytes)
        assert response.status_code == 422, path
        error = response.json()["error"]
        assert error["code"] == "too_costly"
        assert error["message"] == (
            "rise with these parameters plans 126 forward passes, more than the 64 one request "
            "may ask (max_passes_per_request); lower num_masks"
        )
    assert batches(keyed) == passes_before


def _invalid_parameters() -> list[tuple[str, str]]:
    """(method, query) pairs the synchronous call refuses: each bound of each offered
    parameter crossed, each choice missed, and the refusals that need the model or the limit."""
    cases: list[tuple[str, str]] = []
    for name, explainer in EXPLAINERS.items():
        schema = explainer.Params.model_json_schema()
        for field, spec in schema.get("properties", {}).items():
            if field == "batch_size":
                continue  # not offered over HTTP
            options = spec.get("anyOf", [spec])
            for option in options:
                if "maximum" in option:
                    cases.append((name, f"{field}={option['maximum'] + 1}"))
                if "minimum" in option:
                    cases.append((name, f"{field}={option['minimum'] - 1}"))
                if "enum" in option:
                    cases.append((name, f"{field}=nonsense"))
                if option.get("type") == "integer":
                    cases.append((name, f"{field}=many"))
        cases.append((name, "target=nobody"))
    cases += [
        ("gradcam", "layer=../../etc"),
        ("gradcam", f"layer={'x' * 65}"),
        ("occlusion", "window=8&stride=16"),
        ("lime", "num_masks=64"),  # another method's parameter
        ("rise", "num_masks=2017"),
        ("nonsense", ""),
    ]
    return cases


@pytest.mark.parametrize(("method", "query"), _invalid_parameters())
def test_a_job_refuses_what_the_synchronous_call_refuses(
    keyed: TestClient, face_bytes: bytes, method: str, query: str
) -> None:
    sync = post(keyed, f"/explain/{method}?{query}", face_bytes)
    job = post(keyed, f"/jobs/{method}?{query}", face_bytes)
    assert 400 <= sync.status_code < 500, sync.text
    assert job.status_code == sync.status_code, job.text  # never 202, then failed
    assert job.json()["error"]["code"] == sync.json()["error"]["code"]


@pytest.mark.parametrize(
    ("path", "passes", "hint"),
    [
        ("/lime?num_samples=2000", 64, "lower num_samples"),
        ("/saliency?method=integrated_gradients&steps=256", 17, "lower steps"),
        ("/explain/occlusion?window=8&stride=4", 21, "raise stride"),
        ("/jobs/smoothgrad?samples=64&noise=0.2", 9, None),
    ],
)
def test_every_route_honours_the_configured_pass_limit(
    keyless: TestClient, face_bytes: bytes, path: str, passes: int, hint: str | None
) -> None:
    response = post(keyless, path, face_bytes)
    if hint is None:  # within the limit: accepted
        assert response.status_code == 202, response.text
        wait_for(keyless, response.json()["id"], {"done"}, JOIN_S)
        return
    assert response.status_code == 422, response.text
    error = response.json()["error"]
    assert error["code"] == "too_costly"
    assert f"plans {passes} forward passes, more than the 16" in error["message"]
    assert hint in error["message"]
