"""/model names the precision that serves and why; INT8 asked of a bundle without it: not ready."""

from __future__ import annotations

import json

import pytest
from fastapi.testclient import TestClient

from service.app import create_app
from service.bundle.format import INT8_FILE, ONNX_FILE
from service.inference.precision_probe import cpu_info
from service.settings import Settings


def test_the_default_precision_is_auto():
    assert Settings(_env_file=None).precision == "auto"


def test_model_reports_the_precision_that_serves_and_why(client):
    """The default (auto) measured FP32 against INT8 at load: INT8 serves where the CPU has an
    8-bit dot product (VNNI, AMX), FP32 where it has not; /model says which, why, the probe's
    figures and the CPU."""
    runtime = client.get("/model").json()["runtime"]

    cpu = cpu_info()
    expected = "int8" if cpu.int8_dot else "fp32"
    assert runtime["precision_setting"] == "auto"
    assert (runtime["precision"], runtime["onnx_file"]) == (
        expected,
        INT8_FILE if expected == "int8" else ONNX_FILE,
    )
    probe = runtime["precision_probe"]
    assert probe["ratio"] == pytest.approx(probe["int8_ms"] / probe["fp32_ms"])
    assert (probe["ratio"] <= probe["margin"]) is (expected == "int8")
    assert f"INT8 took {probe['ratio']:.2f} of FP32's CPU time" in runtime["precision_reason"]
    assert runtime["cpu"] == {"model": cpu.model, "flags": list(cpu.flags)}
    info = next(
        line
        for line in client.get("/metrics").text.splitlines()
        if line.startswith("celebxai_model_info{")
    )
    assert f'precision="{expected}"' in info


def test_model_says_how_the_twin_runs(client):
    runtime = client.get("/model").json()["runtime"]

    if not {"avx512_bf16", "amx_bf16"} & set(runtime["cpu"]["flags"]):
        assert runtime["twin_precision"] == "fp32"
        assert runtime["twin_bf16_spearman"] is None
        assert "no bfloat16 arithmetic" in runtime["twin_precision_reason"]
    else:  # tried: the gate's figure decides
        passed = runtime["twin_bf16_spearman"] >= 0.99
        assert runtime["twin_precision"] == ("bf16" if passed else "fp32")
        assert f"{runtime['twin_bf16_spearman']:.3f}" in runtime["twin_precision_reason"]


def test_an_explicit_fp32_serves_fp32_without_a_probe(make_settings):
    with TestClient(create_app(make_settings(precision="fp32", api_key=None))) as fp32_client:
        runtime = fp32_client.get("/model").json()["runtime"]

    assert (runtime["precision"], runtime["precision_setting"]) == ("fp32", "fp32")
    assert runtime["precision_probe"] is None
    assert runtime["precision_reason"] == "precision=fp32"


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
