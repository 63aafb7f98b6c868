"""A bundle that fails its load-time checks: the app runs, but is not ready and says why."""

from __future__ import annotations

import json
import shutil

import pytest
from fastapi.testclient import TestClient

from service.app import create_app


@pytest.fixture
def tampered_bundle(default_bundle, tmp_path):
    """The default bundle with split.json changed after its sha256 was recorded."""
    bundle = tmp_path / "tampered"
    bundle.mkdir()
    for path in default_bundle.iterdir():
        if (path.is_file() and path.name != "split.json") or path.name == "open_set":
            (bundle / path.name).symlink_to(path)
    shutil.copy(default_bundle / "split.json", bundle / "split.json")
    with (bundle / "split.json").open("a") as stream:
        stream.write(" ")
    meta = json.loads((default_bundle / "meta.json").read_text())
    meta["files"] = {
        name: info
        for name, info in meta["files"].items()
        if "/" not in name or name.startswith("open_set/")
    }
    (bundle / "meta.json").unlink()
    (bundle / "meta.json").write_text(json.dumps(meta))
    return bundle


@pytest.mark.parametrize("bundle_kind", ["tampered", "missing"])
def test_failed_checks_keep_the_service_not_ready(
    make_settings, tampered_bundle, tmp_path, face_bytes, bundle_kind
):
    bundle = tampered_bundle if bundle_kind == "tampered" else tmp_path / "no-such-bundle"
    expected_reason = (
        "split.json has sha256" if bundle_kind == "tampered" else "directory does not exist"
    )
    settings = make_settings(model=bundle, api_key=None)

    with TestClient(create_app(settings)) as client:
        health = client.get("/healthz")
        ready = client.get("/readyz")
        predict = client.post("/predict", files={"file": ("f.png", face_bytes, "image/png")})
        model = client.get("/model")
        metrics = client.get("/metrics")

    assert health.status_code == 200
    for response in (ready, predict, model):
        assert response.status_code == 503
        assert response.json()["error"]["code"] == "not_ready"
        assert expected_reason in response.json()["error"]["message"]
    assert "celebxai_ready 0.0" in metrics.text
