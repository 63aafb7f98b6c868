"""KServe's ``InferenceRESTClient`` drives the service over the Open Inference Protocol: server
and model readiness and liveness, infer with image bytes (binary and base64 JSON) and with the
model input as a tensor (binary outputs), and explanations at the path its ``explain`` posts to
(``/v1/models/{name}:explain``; with its v2 protocol it refuses to explain). Answers are
/predict's and /explain's.

The client runs in a process of its own, on the API tests' app there (tests/kserve_calls.py says
why, and how to install kserve where the test is skipped).
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
from httpx import Response

from tests.api.conftest import API_KEY
from tests.kserve_calls import kserve_calls


@pytest.mark.slow  # a process of its own loads the app
def test_kserve_client_drives_the_service(
    default_bundle: Path,
    held_out_faces: list[tuple[Path, str]],
    post_image: Callable[..., Response],
):
    path = held_out_faces[3][0]
    photo = path.read_bytes()
    predicted = post_image(photo).json()
    explained = post_image(photo, path="/explain/gradient").json()
    found = kserve_calls(
        "--bundle", str(default_bundle), "--photo", str(path), "--api-key", API_KEY
    )

    classes = found["classes"]
    expected = {item["id"]: item["probability"] for item in predicted["probabilities"]}
    for name in ("binary", "json"):
        probabilities = found[name]["probabilities"][0]
        np.testing.assert_allclose(probabilities, [expected[c] for c in classes], atol=1e-6)
        assert found[name]["label"][0] == predicted["label"]
        assert bool(found[name]["open_set_known"][0]) is predicted["open_set"]["known"]
    assert np.asarray(found["tensor"]["probabilities"]).shape == (1, len(classes))
    grid = np.asarray(explained["heatmap"]["values"], dtype=np.float32)
    heatmap = found["heatmap"]
    values = np.asarray(heatmap["data"], dtype=np.float32).reshape(heatmap["shape"])
    np.testing.assert_allclose(values, grid, atol=2e-4)
    assert found["health"] == [True, True, True]
    assert found["v2_explain_refused"]
