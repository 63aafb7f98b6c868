"""Several models side by side: ``GET /models`` and ``model=`` on every endpoint, on an app whose
``models_dir`` holds a valid second bundle (the default's weights under another name) and a
corrupt one (``tests/api/conftest.py``: ``models_dir``)."""

from __future__ import annotations

import base64
import json
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
from fastapi.testclient import TestClient
from httpx import Response

from service.app import create_app
from service.settings import Settings
from tests.api.conftest import API_KEY, CORRUPT_MODEL, TWIN_MODEL
from tests.api.job_polling import wait_for
from tests.bundle_copies import bundle_copy

DEFAULT_MODEL = "celebs8"
CHEAP = {
    "occlusion": {"window": 56, "stride": 56},
    "lime": {"num_samples": 16, "num_segments": 12},
}


@pytest.fixture(scope="module")
def multi(make_settings: Callable[..., Settings], models_dir: Path) -> Iterator[TestClient]:
    """A client of an app serving the default and ``models_dir``'s bundles."""
    app = create_app(make_settings(models_dir=models_dir, max_loaded_models=2))
    with TestClient(app, headers={"X-API-Key": API_KEY}) as client:
        yield client


def _error(response: Response, status: int, code: str) -> str:
    assert response.status_code == status, response.text
    error = response.json()["error"]
    assert error["code"] == code, error
    return str(error["message"])


def _calls(face: bytes, train_file: str) -> dict[str, Callable[[TestClient, str], Response]]:
    """One call per endpoint that takes ``model=``, by name: ``call(client, query)`` where
    ``query`` is ``""`` or ``"model=<name>"``."""
    files = {"file": ("face.png", face, "image/png")}
    grid = json.dumps([[float(i + j) for j in range(150)] for i in range(150)]).encode()
    with_map = {**files, "map": ("map.json", grid, "application/json")}

    def post(path: str, body: dict | None = None) -> Callable[[TestClient, str], Response]:
        join = "&" if "?" in path else "?"
        return lambda c, q: c.post(f"{path}{join}{q}" if q else path, files=body or files)

    def get(path: str) -> Callable[[TestClient, str], Response]:
        join = "&" if "?" in path else "?"
        return lambda c, q: c.get(f"{path}{join}{q}" if q else path)

    return {
        "predict": post("/predict"),
        "saliency": post("/saliency"),
        "occlusion": post("/occlusion?window=56&stride=56"),
        "lime": post("/lime?num_samples=16&num_segments=12"),
        "explain": post("/explain/gradcam"),
        "evaluate": post("/explain/evaluate", with_map),
        "methods": get("/explain"),
        "model": get("/model"),
        "filters": get("/insight/filters?layer=stem"),
        "activations": post("/insight/activations?layer=layer1&top=2&format=json"),
        "receptive_field": get("/insight/receptive-field"),
        "top_patches": get("/insight/top-patches?layer=layer1&channel=0&format=json"),
        "maximize": get("/insight/maximize?class=tom_hanks&steps=2&format=json"),
        "evidence": get(f"/evidence/{train_file}"),
        "explain_job": post("/jobs/gradient"),
        "maximize_job": lambda c, q: c.post(
            f"/jobs/maximize?class=tom_hanks&steps=2{'&' + q if q else ''}"
        ),
    }


@pytest.fixture(scope="module")
def calls(face_bytes: bytes, default_bundle: Path) -> dict[str, Callable[..., Response]]:
    split = json.loads((default_bundle / "split.json").read_text())
    relative = split["splits"]["train"][0][0]  # <class_id>/<file>
    return _calls(face_bytes, relative)


ENDPOINTS = list(_calls(b"", "a/b"))


def test_models_lists_every_bundle_with_its_metrics(multi: TestClient) -> None:
    body = multi.get("/models").json()
    assert body["default"] == DEFAULT_MODEL and body["max_loaded"] == 2
    assert [m["name"] for m in body["models"]] == [DEFAULT_MODEL, CORRUPT_MODEL, TWIN_MODEL]
    default = body["models"][0]
    assert default["default"] and default["loaded"]
    assert default["classes"][-1] == "Tom Hanks" and len(default["classes"]) == 8
    assert default["metrics"]["test_accuracy"] == pytest.approx(0.996, abs=0.001)
    assert 0.9 < default["metrics"]["open_set_auroc"] <= 1
    assert default["metrics"]["val_accuracy"] == 1.0
    assert default["architecture"]["backbone"] == "dlib-resnet29"
    assert default["size_bytes"] > 50_000_000
    assert all(not m["default"] for m in body["models"][1:])


def test_models_needs_the_api_key(multi: TestClient) -> None:
    _error(multi.get("/models", headers={"X-API-Key": ""}), 401, "missing_api_key")


@pytest.mark.parametrize("endpoint", ENDPOINTS)
def test_an_unknown_model_is_404_listing_the_valid_names(
    multi: TestClient, calls: dict, endpoint: str
) -> None:
    message = _error(calls[endpoint](multi, "model=nobody"), 404, "unknown_model")
    assert message == (f"no model 'nobody'; valid: {DEFAULT_MODEL}, {CORRUPT_MODEL}, {TWIN_MODEL}")


@pytest.mark.parametrize("endpoint", ENDPOINTS)
def test_every_endpoint_answers_with_the_model_asked_for(
    multi: TestClient, calls: dict, endpoint: str
) -> None:
    response = calls[endpoint](multi, f"model={TWIN_MODEL}")
    assert response.status_code in (200, 202), response.text
    if endpoint.endswith("_job"):
        done = wait_for(multi, response.json()["id"], {"done", "failed"})
        assert done["state"] == "done", done
        if endpoint == "explain_job":
            assert done["result"]["model"]["name"] == TWIN_MODEL
            result = multi.get(f"/jobs/{done['id']}/result").json()
            assert result["model"] == {"name": TWIN_MODEL, "version": "1.0.0"}
        return
    if response.headers["content-type"] != "application/json":
        return  # an image: nothing in it names the model
    body = response.json()
    if "model" in body and isinstance(body["model"], dict):
        assert body["model"]["name"] == TWIN_MODEL
    if endpoint == "model":
        assert body["meta"]["name"] == TWIN_MODEL


@pytest.mark.parametrize("endpoint", ["predict", "explain", "evaluate", "model"])
def test_without_model_the_default_answers(multi: TestClient, calls: dict, endpoint: str) -> None:
    body = calls[endpoint](multi, "").json()
    name = body["meta"]["name"] if endpoint == "model" else body["model"]["name"]
    assert name == DEFAULT_MODEL
    named = calls[endpoint](multi, f"model={DEFAULT_MODEL}").json()
    assert named.get("model") == body.get("model")


def test_the_same_weights_give_the_same_answer_under_both_names(
    multi: TestClient, calls: dict
) -> None:
    default = calls["predict"](multi, "").json()
    twin = calls["predict"](multi, f"model={TWIN_MODEL}").json()
    assert twin["probabilities"] == default["probabilities"]
    assert default["open_set"]["evidence"]["nearest"]["thumbnail"].startswith("/evidence/")
    assert "?" not in default["open_set"]["evidence"]["nearest"]["thumbnail"]
    link = twin["open_set"]["evidence"]["nearest"]["thumbnail"]
    assert link.endswith(f"?model={TWIN_MODEL}")
    assert multi.get(link).headers["content-type"] == "image/jpeg"


def test_a_bundle_that_fails_its_checks_is_503_and_the_others_serve(
    multi: TestClient, calls: dict
) -> None:
    for _ in range(2):
        message = _error(
            calls["predict"](multi, f"model={CORRUPT_MODEL}"), 503, "model_unavailable"
        )
        assert message.startswith(f"model '{CORRUPT_MODEL}' cannot be served: bundle file check")
        assert "model.onnx has sha256" in message
    listed = {m["name"]: m for m in multi.get("/models").json()["models"]}
    assert "model.onnx" in listed[CORRUPT_MODEL]["unavailable"]
    assert not listed[CORRUPT_MODEL]["loaded"]
    assert calls["predict"](multi, "").status_code == 200
    assert calls["predict"](multi, f"model={TWIN_MODEL}").status_code == 200
    assert multi.get("/readyz").status_code == 200


def test_a_loaded_model_says_what_memory_it_took_and_metrics_count_loads(
    multi: TestClient, calls: dict
) -> None:
    assert calls["predict"](multi, f"model={TWIN_MODEL}").status_code == 200
    listed = {m["name"]: m for m in multi.get("/models").json()["models"]}
    assert listed[TWIN_MODEL]["loaded"]
    assert listed[TWIN_MODEL]["rss_bytes"] > 10_000_000
    metrics = multi.get("/metrics").text
    assert f'celebxai_model_loads_total{{model="{TWIN_MODEL}",outcome="ok"}}' in metrics
    assert "celebxai_models_loaded 2.0" in metrics


def _v2_image(face: bytes) -> dict:
    data = [base64.b64encode(face).decode()]
    return {"inputs": [{"name": "image", "datatype": "BYTES", "shape": [1], "data": data}]}


@pytest.mark.parametrize("name", [DEFAULT_MODEL, TWIN_MODEL])
def test_v2_serves_every_model_by_its_path(multi: TestClient, face_bytes: bytes, name: str) -> None:
    assert multi.get(f"/v2/models/{name}").json()["name"] == name
    assert multi.get(f"/v2/models/{name}/ready").json() == {"name": name, "ready": True}
    infer = multi.post(f"/v2/models/{name}/infer", json=_v2_image(face_bytes)).json()
    assert infer["model_name"] == name
    body = _v2_image(face_bytes) | {"parameters": {"method": "gradient"}}
    explained = multi.post(f"/v2/models/{name}/explain", json=body).json()
    assert explained["model_name"] == name


def test_v2_names_the_valid_models_for_an_unknown_one(multi: TestClient) -> None:
    response = multi.get("/v2/models/nobody")
    assert response.status_code == 404
    assert response.json()["error"] == (
        f"unknown_model: no model 'nobody'; valid: {DEFAULT_MODEL}, {CORRUPT_MODEL}, {TWIN_MODEL}"
    )


@pytest.mark.slow
def test_requests_for_more_models_than_fit_at_once_are_all_answered(
    make_settings: Callable[..., Settings],
    default_bundle: Path,
    tmp_path: Path,
    face_bytes: bytes,
) -> None:
    """Room for one model beside the default and requests for two others at once (as the
    page's compare view sends them): every request is answered by its model, none fails
    because the other's load unloaded its model before it ran."""
    names = ("celebs8-left", "celebs8-right")
    for name in names:
        bundle_copy(default_bundle, tmp_path / name, name)
    app = create_app(make_settings(models_dir=tmp_path, max_loaded_models=2))
    files = {"file": ("face.png", face_bytes, "image/png")}
    asked = [name for name in names for _ in range(3)]
    with TestClient(app, headers={"X-API-Key": API_KEY}) as client:
        with ThreadPoolExecutor(len(asked)) as pool:
            answers = list(
                pool.map(lambda name: client.post(f"/predict?model={name}", files=files), asked)
            )
        assert [a.status_code for a in answers] == [200] * len(asked), [a.text for a in answers]
        assert [a.json()["model"]["name"] for a in answers] == asked
        listed = {m["name"]: m["loaded"] for m in client.get("/models").json()["models"]}
        assert sum(listed.values()) == 2  # the bound holds once the requests are done
