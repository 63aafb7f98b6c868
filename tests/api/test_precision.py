"""/model names the precision that serves; INT8 asked of a bundle without it: not ready."""

from __future__ import annotations

import json

from fastapi.testclient import TestClient

from service.app import create_app
from service.bundle.format import INT8_FILE, ONNX_FILE


def test_model_reports_the_precision_that_serves(client):
    runtime = client.get("/model").json()["runtime"]

    assert (runtime["precision"], runtime["onnx_file"]) == ("fp32", ONNX_FILE)
    info = next(
        line
        for line in client.get("/metrics").text.splitlines()
        if line.startswith("celebxai_model_info{")
    )
    assert 'precision="fp32"' in info


def test_int8_without_the_file_leaves_the_service_not_ready(
    make_settings, default_bundle, tmp_path
):
    bundle = tmp_path / "fp32-only"
    bundle.mkdir()
    for path in default_bundle.iterdir():
        if path.name not in ("meta.json", INT8_FILE):
            (bundle / path.name).symlink_to(path)
    raw = json.loads((default_bundle / "meta.json").read_text())
    raw["files"].pop(INT8_FILE)
    raw.pop("precision")
    (bundle / "meta.json").write_text(json.dumps(raw))

    with TestClient(create_app(make_settings(model=bundle, precision="int8"))) as client:
        ready = client.get("/readyz")

    assert ready.status_code == 503
    assert ready.json()["error"]["code"] == "not_ready"
    assert "no INT8 model" in ready.json()["error"]["message"]
