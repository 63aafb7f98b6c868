"""The Open Inference Protocol on both hosts: ``python -m service`` and ``python -m service
--ray`` answer v2 health, infer and the explanation extension alike, infer from a ``Predict``
replica and explain from an ``Explain`` one (their ``x-served-by``), each equal to the same
host's /predict and /explain, and refuse bad requests with the same protocol errors."""

from __future__ import annotations

import base64
from collections.abc import Iterator
from pathlib import Path

import httpx
import numpy as np
import pytest

from tests.image_bytes import face_png
from tests.kserve_calls import kserve_calls
from tests.scaleout.conftest import API_KEY, MAX_UPLOAD_BYTES, RayService, Service
from tests.v2_wire import binary_image_request, error_of, image_request, outputs

pytestmark = pytest.mark.ray

KEY = {"X-API-Key": API_KEY}
TIMEOUT_S = 180.0
SERVED_BY = "x-served-by"


@pytest.fixture(scope="module")
def clients(single_service: Service, ray_service: RayService) -> Iterator[dict[str, httpx.Client]]:
    made = {
        name: httpx.Client(base_url=service.url, timeout=TIMEOUT_S, headers=KEY)
        for name, service in (("single", single_service), ("ray", ray_service))
    }
    yield made
    for client in made.values():
        client.close()


@pytest.fixture(scope="module")
def face(celebs_root: Path) -> bytes:
    return face_png(celebs_root, "tom_hanks")


def test_ready_on_both_hosts(clients: dict[str, httpx.Client]):
    for host, client in clients.items():
        assert client.get("/v2/health/ready").json() == {"ready": True}, host
        assert client.get("/v2").json()["extensions"] == ["binary_tensor_data", "explain"], host


def test_infer_equals_predict_on_both_hosts(clients: dict[str, httpx.Client], face: bytes):
    found = {}
    for host, client in clients.items():
        model = client.get("/v2/models/celebs8").json()
        classes = model["parameters"]["classes"].split(",")
        body, headers = binary_image_request(face, parameters={"binary_data_output": True})
        answer = client.post("/v2/models/celebs8/infer", content=body, headers=headers)
        found[host] = outputs(answer)
        predicted = client.post("/predict", files={"file": ("face.png", face, "image/png")})
        expected = {item["id"]: item["probability"] for item in predicted.json()["probabilities"]}
        np.testing.assert_allclose(
            found[host]["probabilities"][0], [expected[c] for c in classes], atol=1e-6
        )
        assert found[host]["label"] == [predicted.json()["label"].encode()]
        if host == "ray":
            assert "Predict" in answer.headers.get(SERVED_BY, ""), answer.headers
    np.testing.assert_allclose(
        found["single"]["probabilities"], found["ray"]["probabilities"], atol=1e-3
    )


def test_explain_equals_explain_on_both_hosts(clients: dict[str, httpx.Client], face: bytes):
    maps = {}
    for host, client in clients.items():
        request = image_request(face, parameters={"method": "gradcam", "detect": False})
        answer = client.post("/v2/models/celebs8/explain", json=request)
        maps[host] = outputs(answer)["heatmap"]
        route = client.post(
            "/explain/gradcam",
            params={"detect": "false"},
            files={"file": ("face.png", face, "image/png")},
        )
        grid = np.asarray(route.json()["heatmap"]["values"], dtype=np.float32)
        np.testing.assert_allclose(maps[host], grid, atol=2e-4)
        if host == "ray":
            assert "Explain" in answer.headers.get(SERVED_BY, ""), answer.headers
    np.testing.assert_allclose(maps["single"], maps["ray"], atol=2e-2)


@pytest.mark.parametrize(
    ("path", "body", "status", "code"),
    [
        ("/v2/models/nobody/infer", b'{"inputs": []}', 404, "unknown_model"),
        ("/v2/models/celebs8/infer", b'{"inputs": [', 400, "malformed_body"),
        ("/v2/models/celebs8/explain", b"x" * (MAX_UPLOAD_BYTES + 100_000), 413, "file_too_large"),
    ],
)
def test_same_protocol_errors_on_both_hosts(
    clients: dict[str, httpx.Client], path: str, body: bytes, status: int, code: str
):
    for host, client in clients.items():
        answer = client.post(path, content=body, headers={"Content-Type": "application/json"})
        assert (answer.status_code, error_of(answer)) == (status, code), (host, answer.text)


def test_the_generated_client_on_both_hosts(clients: dict[str, httpx.Client], face: bytes):
    """``open-inference-openapi``'s client: health, metadata, infer with bytes, on each host."""
    openapi = pytest.importorskip("open_inference.openapi")
    from open_inference.openapi.client import OpenInferenceClient

    for host, client in clients.items():
        oip = OpenInferenceClient(base_url=str(client.base_url), httpx_client=client)
        oip.check_server_readiness()
        oip.check_model_readiness(model_name="celebs8")
        assert [t.name for t in oip.read_model_metadata(model_name="celebs8").inputs or []] == [
            "image",
            "input",
        ]
        image = openapi.RequestInput(
            name="image", shape=[1], datatype="BYTES", data=[base64.b64encode(face).decode()]
        )
        answer = oip.model_infer(
            model_name="celebs8", request=openapi.InferenceRequest(inputs=[image])
        )
        labels = {o.name: o.data.__root__ for o in answer.outputs}["label"]
        predicted = client.post("/predict", files={"file": ("face.png", face, "image/png")})
        assert labels == [predicted.json()["label"]], host


def test_kserve_client_on_both_hosts(clients: dict[str, httpx.Client], face: bytes, tmp_path: Path):
    """KServe's ``InferenceRESTClient``, in a process of its own (tests/kserve_calls.py says
    why): liveness and readiness, infer with bytes and with a model input tensor, explain."""
    photo = tmp_path / "face.png"
    photo.write_bytes(face)
    blanks = {}
    for host, client in clients.items():
        found = kserve_calls(
            "--url",
            str(client.base_url),
            "--photo",
            str(photo),
            "--api-key",
            API_KEY,
            "--method",
            "gradcam",
        )
        predicted = client.post("/predict", files={"file": ("face.png", face, "image/png")})
        assert found["health"] == [True, True, True], host
        assert found["binary"]["label"] == [predicted.json()["label"]], host
        assert found["heatmap"]["shape"] == [112, 112], host
        blanks[host] = np.asarray(found["tensor"]["probabilities"])
    # the same model input classified alike by both hosts
    np.testing.assert_allclose(blanks["single"], blanks["ray"], atol=1e-6)
    assert blanks["single"].shape == (1, 8)
