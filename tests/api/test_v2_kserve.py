"""KServe's ``InferenceRESTClient`` drives the service over the Open Inference Protocol: server
and model readiness and liveness, infer with image bytes (binary and base64 JSON) and with the
model input as a tensor (binary outputs), and explanations at the path its ``explain`` posts to
(``/v1/models/{name}:explain``; with its v2 protocol it refuses to explain). Answers are
/predict's and /explain's.

``kserve`` is not in the dev extra: kserve 0.21 requires ``protobuf<7`` and ``psutil<6``
(older than this environment's, which Ray uses) and the Kubernetes client. Its client runs
with this environment's versions all the same: the test runs where kserve is importable, and is
skipped, saying so, elsewhere. .ci/run installs tests/kserve-client.txt with ``--no-deps`` into
``.kserve-client/`` and runs it with ``PYTHONPATH=.kserve-client``; so can you.
"""

from __future__ import annotations

import asyncio
import base64
from collections.abc import Callable
from pathlib import Path

import httpx
import numpy as np
import pytest
from httpx import Response

from service.app import create_app
from service.settings import Settings
from tests.api.conftest import API_KEY

kserve = pytest.importorskip(
    "kserve", reason="kserve is not installed (its pins conflict with this environment's)"
)

URL = "http://testserver"
MODEL = "celebs8"
KEY = {"X-API-Key": API_KEY}


def test_kserve_client_drives_the_service(
    make_settings: Callable[..., Settings],
    held_out_faces: list[tuple[Path, str]],
    post_image: Callable[..., Response],
):
    photo = held_out_faces[3][0].read_bytes()
    predicted = post_image(photo).json()
    explained = post_image(photo, path="/explain/gradient").json()
    found = asyncio.run(_drive(create_app(make_settings()), photo))

    classes = found["classes"]
    expected = {item["id"]: item["probability"] for item in predicted["probabilities"]}
    for name in ("binary", "json"):
        probabilities = found[name]["probabilities"][0]
        np.testing.assert_allclose(probabilities, [expected[c] for c in classes], atol=1e-6)
        assert found[name]["label"][0] == predicted["label"]
        assert bool(found[name]["open_set_known"][0]) is predicted["open_set"]["known"]
    assert found["tensor"]["probabilities"].shape == (1, len(classes))
    grid = np.asarray(explained["heatmap"]["values"], dtype=np.float32)
    np.testing.assert_allclose(found["heatmap"], grid, atol=2e-4)
    assert found["health"] == (True, True, True)


async def _drive(app, photo: bytes) -> dict:
    """Every call of the client on ``app`` (its lifespan run here, on this event loop)."""
    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=app)
        v2 = kserve.InferenceRESTClient(kserve.RESTConfig(transport=transport, protocol="v2"))
        v1 = kserve.InferenceRESTClient(kserve.RESTConfig(transport=transport, protocol="v1"))
        health = (
            await v2.is_server_live(URL, headers=KEY),
            await v2.is_server_ready(URL, headers=KEY),
            await v2.is_model_ready(URL, MODEL, headers=KEY),
        )
        metadata = await httpx.AsyncClient(transport=transport).get(
            f"{URL}/v2/models/{MODEL}", headers=KEY
        )
        found: dict = {"health": health, "classes": metadata.json()["parameters"]["classes"]}
        found["classes"] = found["classes"].split(",")
        for name, data, binary in (
            ("binary", photo, True),
            ("json", base64.b64encode(photo), False),
        ):
            image = kserve.InferInput("image", [1], "BYTES")
            image.set_data_from_numpy(np.array([data], dtype=np.object_), binary_data=binary)
            request = kserve.InferRequest(model_name=MODEL, infer_inputs=[image])
            answer = await v2.infer(URL, request, model_name=MODEL, headers=dict(KEY))
            found[name] = {o.name: o.as_numpy() for o in answer.outputs}
        x = np.zeros((1, 3, 150, 150), dtype=np.float32)
        tensor = kserve.InferInput("input", list(x.shape), "FP32")
        tensor.set_data_from_numpy(x, binary_data=True)
        request = kserve.InferRequest(
            model_name=MODEL, infer_inputs=[tensor], parameters={"binary_data_output": True}
        )
        answer = await v2.infer(URL, request, model_name=MODEL, headers=dict(KEY))
        found["tensor"] = {o.name: o.as_numpy() for o in answer.outputs}
        body = {
            "parameters": {"method": "gradient"},
            "inputs": [
                {
                    "name": "image",
                    "datatype": "BYTES",
                    "shape": [1],
                    "data": [base64.b64encode(photo).decode()],
                }
            ],
        }
        explained = await v1.explain(URL, MODEL, body, headers=KEY)
        heatmap = next(o for o in explained["outputs"] if o["name"] == "heatmap")
        found["heatmap"] = np.asarray(heatmap["data"], dtype=np.float32).reshape(heatmap["shape"])
        with pytest.raises(kserve.errors.UnsupportedProtocol):
            await v2.explain(URL, MODEL, body, headers=KEY)
        return found
