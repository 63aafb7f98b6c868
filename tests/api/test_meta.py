"""GET /model, /healthz, /readyz; errors from the framework itself; CORS."""

from __future__ import annotations

import json

import pytest

from service.bundle.checks import sha256_of


def test_healthz(client):
    response = client.get("/healthz")

    assert response.status_code == 200
    assert response.json() == {"status": "ok"}


def test_readyz_names_the_model(client, serving_model):
    response = client.get("/readyz")

    assert response.status_code == 200
    assert response.json() == {
        "status": "ready",
        "model": {"name": serving_model.meta.name, "version": serving_model.meta.version},
        "provider": "CPUExecutionProvider",
    }


def test_model_returns_the_bundle_metadata(client, default_bundle, api_settings):
    response = client.get("/model")

    assert response.status_code == 200
    body = response.json()
    on_disk = json.loads((default_bundle / "meta.json").read_text())
    for key in ("name", "version", "classes", "input", "gradcam_layer", "files", "metrics"):
        assert body["meta"][key] == on_disk[key], key
    runtime = body["runtime"]
    assert runtime["provider"] == "CPUExecutionProvider"
    assert runtime["max_batch_size"] == api_settings.max_batch_size
    assert runtime["files_verified"] == len(on_disk["files"])
    assert runtime["parity_max_abs_diff"] <= runtime["parity_tolerance"]
    assert body["meta"]["files"]["model.onnx"]["sha256"] == sha256_of(default_bundle / "model.onnx")


def test_model_needs_the_api_key(client):
    response = client.get("/model", headers={"X-API-Key": "nope"})

    assert response.status_code == 401
    assert response.json()["error"]["code"] == "invalid_api_key"


@pytest.mark.parametrize(
    ("method", "path", "status", "code"),
    [
        ("GET", "/nowhere", 404, "not_found"),
        ("GET", "/predict", 405, "method_not_allowed"),
        ("POST", "/healthz", 405, "method_not_allowed"),
        ("DELETE", "/model", 405, "method_not_allowed"),
    ],
)
def test_framework_errors_use_the_error_shape(client, method, path, status, code):
    response = client.request(method, path)

    assert response.status_code == status
    assert response.json()["error"]["code"] == code
    assert response.json()["error"]["message"]


def test_cors_preflight_allows_the_configured_origin(client, api_settings):
    origin = api_settings.cors_origins[0]

    response = client.options(
        "/predict",
        headers={
            "Origin": origin,
            "Access-Control-Request-Method": "POST",
            "Access-Control-Request-Headers": "x-api-key",
        },
    )

    assert response.status_code == 200
    assert response.headers["access-control-allow-origin"] == origin
    assert "x-api-key" in response.headers["access-control-allow-headers"].lower()


def test_cors_ignores_other_origins(client):
    response = client.get("/healthz", headers={"Origin": "http://evil.example"})

    assert response.status_code == 200
    assert "access-control-allow-origin" not in response.headers


@pytest.mark.parametrize("path", ["/healthz", "/readyz", "/", "/model", "/metrics", "/docs"])
def test_head_answers_like_get_without_a_body(client, path):
    get, head = client.get(path), client.head(path)

    assert head.status_code == get.status_code == 200
    assert head.content == b""
    assert head.headers["content-type"] == get.headers["content-type"]


def test_head_on_a_post_only_path_is_405(client):
    response = client.head("/predict")

    assert response.status_code == 405


def test_a_refused_cors_preflight_is_json(client):
    response = client.options(
        "/predict",
        headers={"Origin": "http://evil.example", "Access-Control-Request-Method": "POST"},
    )

    assert response.status_code == 403
    assert response.json()["error"] == {
        "code": "cors_refused",
        "message": "CORS preflight refused: origin not allowed",
    }


def test_a_refused_cors_preflight_under_v2_takes_the_protocols_error_shape(client):
    response = client.options(
        "/v2/models/celebs8/infer",
        headers={"Origin": "http://evil.example", "Access-Control-Request-Method": "POST"},
    )

    assert response.status_code == 403
    assert response.json() == {"error": "cors_refused: CORS preflight refused: origin not allowed"}


def test_readyz_of_a_missing_bundle_names_no_path(make_settings, tmp_path):
    from fastapi.testclient import TestClient

    from service.app import create_app

    app = create_app(make_settings(model=tmp_path / "hidden-dir" / "bundle"))
    with TestClient(app) as client:
        response = client.get("/readyz")

    assert response.status_code == 503
    message = response.json()["error"]["message"]
    assert message == (
        "the model bundle cannot be served: the model bundle directory does not exist"
    )


def test_docs_are_served_by_the_service_itself(client):
    page = client.get("/docs")

    assert page.status_code == 200
    assert "//" not in page.text.replace("<!doctype html>", "")
    for asset in (
        "docs/assets/swagger-ui-bundle.js",
        "docs/assets/swagger-ui.css",
        "static/docs.js",
    ):
        assert f'"{asset}"' in page.text
        assert client.get(f"/{asset}").status_code == 200
    assert client.get("/redoc").status_code == 404  # not offered (it would need a CDN)
