"""The Open Inference Protocol's generated client (``open-inference-openapi``) drives the
service as it would any v2 server: liveness, readiness, server and model metadata, model
readiness (with and without the version), infer with image bytes and with the model input as
a tensor; its answers are /predict's. Its errors come back as the protocol's error object.

This client has no explanations: the extension is driven with httpx in test_v2.py, and with
KServe's ``InferenceRESTClient`` in test_v2_kserve.py (where kserve is importable).
"""

from __future__ import annotations

import base64
import io
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
from fastapi.testclient import TestClient
from httpx import Response
from PIL import Image

from service.faces.aligned import whole_image
from service.inference.model import ServingModel

openapi = pytest.importorskip("open_inference.openapi", reason="the dev extra's client")
from open_inference.openapi.client import OpenInferenceClient  # noqa: E402
from open_inference.openapi.core.api_error import ApiError  # noqa: E402

MODEL = "celebs8"


@pytest.fixture(scope="module")
def oip(client: TestClient) -> OpenInferenceClient:
    """The generated client on the session's app (the test client is an httpx client, with
    the API key in its headers)."""
    return OpenInferenceClient(base_url=str(client.base_url), httpx_client=client)


@pytest.fixture(scope="module")
def photo(held_out_faces: list[tuple[Path, str]]) -> bytes:
    return held_out_faces[5][0].read_bytes()


def _probabilities(response: object, class_ids: list[str]) -> tuple[np.ndarray, str]:
    by_name = {output.name: output for output in response.outputs}  # type: ignore[attr-defined]
    probabilities = np.asarray(by_name["probabilities"].data.__root__, dtype=np.float32)
    label = by_name["label"].data.__root__[0]
    return probabilities.reshape(by_name["probabilities"].shape), str(label)


def test_health_and_metadata(oip: OpenInferenceClient, serving_model: ServingModel):
    oip.check_server_liveness()
    oip.check_server_readiness()
    oip.check_model_readiness(model_name=MODEL)
    oip.check_model_version_readiness(model_name=MODEL, model_version=serving_model.meta.version)
    server = oip.read_server_metadata()
    assert "explain" in server.extensions and "binary_tensor_data" in server.extensions
    model = oip.read_model_metadata(model_name=MODEL)
    assert model.name == MODEL and model.versions == [serving_model.meta.version]
    assert [tensor.name for tensor in model.inputs or []] == ["image", "input"]
    version = oip.read_model_version_metadata(
        model_name=MODEL, model_version=serving_model.meta.version
    )
    assert version == model
    with pytest.raises(ApiError) as refused:
        oip.read_model_metadata(model_name="nobody")
    assert refused.value.status_code == 404
    assert str(refused.value.body["error"]).startswith("unknown_model: ")


def test_infer_bytes_and_tensor_equal_predict(
    oip: OpenInferenceClient,
    serving_model: ServingModel,
    post_image: Callable[..., Response],
    photo: bytes,
):
    class_ids = [info.id for info in serving_model.meta.classes]
    as_bytes = oip.model_infer(
        model_name=MODEL,
        request=openapi.InferenceRequest(
            inputs=[
                openapi.RequestInput(
                    name="image",
                    shape=[1],
                    datatype="BYTES",
                    data=[base64.b64encode(photo).decode()],
                )
            ]
        ),
    )
    with Image.open(io.BytesIO(photo)) as image:
        crop = whole_image(image.convert("RGB"), serving_model.meta.input.framing).crop
    x = serving_model.preprocess(crop)[None]
    as_tensor = oip.model_version_infer(
        model_name=MODEL,
        model_version=serving_model.meta.version,
        request=openapi.InferenceRequest(
            inputs=[
                openapi.RequestInput(
                    name="input",
                    shape=list(x.shape),
                    datatype="FP32",
                    data=[float(str(value)) for value in x.ravel()],
                )
            ]
        ),
    )
    for response, query in ((as_bytes, ""), (as_tensor, "?detect=false")):
        expected = post_image(photo, path=f"/predict{query}").json()
        probabilities, label = _probabilities(response, class_ids)
        by_id = {item["id"]: item["probability"] for item in expected["probabilities"]}
        np.testing.assert_allclose(probabilities[0], [by_id[c] for c in class_ids], atol=1e-6)
        assert label == expected["label"]
        assert response.model_name == MODEL


def test_a_bad_request_is_the_clients_error(oip: OpenInferenceClient):
    with pytest.raises(ApiError) as refused:
        oip.model_infer(
            model_name=MODEL,
            request=openapi.InferenceRequest(
                inputs=[openapi.RequestInput(name="image", shape=[1], datatype="INT8", data=[1])]
            ),
        )
    assert refused.value.status_code == 422
    assert str(refused.value.body["error"]).startswith("validation_error: ")
