"""The Open Inference Protocol ("v2") beside the service's API, on real photos and the real
bundle: health and metadata, infer with image bytes (JSON base64 and binary tensor data) and
with the model input as an FP32 tensor, the explanation extension, and every bad request a
client can send, each a 4xx in the protocol's error shape after which the service still
serves. Answers are compared with /predict's and /explain's for the same photo."""

from __future__ import annotations

import base64
import io
import json
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
from fastapi.testclient import TestClient
from httpx import Response
from PIL import Image

from service import __version__
from service.faces.aligned import whole_image
from service.inference.model import ServingModel
from tests.api.conftest import API_KEY, MAX_UPLOAD_BYTES, WEB_ORIGIN
from tests.v2_wire import (
    binary_body,
    binary_image_request,
    error_of,
    image_request,
    outputs,
    pack_bytes,
    tensor_request,
)

MODEL = "celebs8"
INFER = f"/v2/models/{MODEL}/infer"
EXPLAIN = f"/v2/models/{MODEL}/explain"
COARSE = {"window": 32, "stride": 32}  # occlusion in a few passes


@pytest.fixture(scope="module")
def version(serving_model: ServingModel) -> str:
    return serving_model.meta.version


@pytest.fixture(scope="module")
def class_ids(serving_model: ServingModel) -> list[str]:
    return [info.id for info in serving_model.meta.classes]


@pytest.fixture(scope="module")
def photos(held_out_faces: list[tuple[Path, str]]) -> list[bytes]:
    """Four held-out photos of four people."""
    return [path.read_bytes() for path, _ in held_out_faces[::4][:4]]


@pytest.fixture(scope="module")
def predicted(post_image: Callable[..., Response], photos: list[bytes]) -> Callable[..., dict]:
    """``predicted(photo, **query)``: /predict's answer, kept per photo and query."""
    answers: dict[tuple[int, str], dict] = {}

    def predict(photo: bytes, **query: str) -> dict:
        key = (photos.index(photo) if photo in photos else hash(photo), json.dumps(query))
        if key not in answers:
            path = "/predict" + (
                "?" + "&".join(f"{k}={v}" for k, v in query.items()) if query else ""
            )
            response = post_image(photo, path=path)
            assert response.status_code == 200, response.text
            answers[key] = response.json()
        return answers[key]

    return predict


def _same_as_predict(found: dict, row: int, answer: dict, class_ids: list[str]) -> None:
    """Row ``row`` of an infer answer is /predict's ``answer``: every probability, the label,
    its name, the open-set score and verdict."""
    expected = {item["id"]: item["probability"] for item in answer["probabilities"]}
    np.testing.assert_allclose(
        found["probabilities"][row], [expected[i] for i in class_ids], rtol=1e-5, atol=1e-6
    )
    assert found["label"][row].decode() == answer["label"]
    assert found["name"][row].decode() == answer["name"]
    assert found["open_set_score"][row] == pytest.approx(answer["open_set"]["score"], abs=1e-5)
    assert bool(found["open_set_known"][row]) is answer["open_set"]["known"]


# -- health and metadata ---------------------------------------------------------------------


def test_server_metadata_names_the_extensions(client: TestClient):
    answer = client.get("/v2")
    assert answer.status_code == 200
    assert answer.json() == {
        "name": "celebxai",
        "version": __version__,
        "extensions": ["binary_tensor_data", "explain"],
    }


def test_live_and_ready(client: TestClient):
    assert client.get("/v2/health/live").json() == {"live": True}
    assert client.get("/v2/health/ready").json() == {"ready": True}
    assert client.get(f"/v2/models/{MODEL}/ready").json() == {"name": MODEL, "ready": True}


def test_model_metadata_lists_inputs_outputs_and_classes(
    client: TestClient, serving_model: ServingModel, class_ids: list[str], version: str
):
    answer = client.get(f"/v2/models/{MODEL}")
    assert answer.status_code == 200
    meta = answer.json()
    spec = serving_model.meta.input
    assert meta["name"] == MODEL and meta["versions"] == [version]
    assert [(t["name"], t["datatype"], t["shape"]) for t in meta["inputs"]] == [
        ("image", "BYTES", [-1]),
        ("input", "FP32", [-1, 3, spec.height, spec.width]),
    ]
    assert [(t["name"], t["datatype"]) for t in meta["outputs"]] == [
        ("probabilities", "FP32"),
        ("label", "BYTES"),
        ("name", "BYTES"),
        ("open_set_score", "FP32"),
        ("open_set_known", "BOOL"),
    ]
    assert meta["parameters"]["classes"].split(",") == class_ids
    assert meta["outputs"][0]["shape"] == [-1, len(class_ids)]
    # the same under the version's path; another version or name is 404 unknown_model
    assert client.get(f"/v2/models/{MODEL}/versions/{version}").json() == meta
    ready = client.get(f"/v2/models/{MODEL}/versions/{version}/ready")
    assert ready.json() == {"name": MODEL, "ready": True}
    for path in (
        f"/v2/models/{MODEL}/versions/0.0.0-none",
        f"/v2/models/{MODEL}/versions/0.0.0-none/ready",
        "/v2/models/nobody",
        "/v2/models/nobody/ready",
    ):
        refused = client.get(path)
        assert (refused.status_code, error_of(refused)) == (404, "unknown_model"), path


# -- infer -----------------------------------------------------------------------------------


def test_infer_bytes_equals_predict_for_every_photo(
    client: TestClient, photos: list[bytes], predicted: Callable, class_ids: list[str]
):
    """Four photos in one request ([4] BYTES, base64 in JSON): row by row /predict's answers."""
    found = outputs(client.post(INFER, json=image_request(*photos, id="four")))
    assert found["probabilities"].shape == (4, len(class_ids))
    assert found["probabilities"].dtype == np.float32
    for row, photo in enumerate(photos):
        _same_as_predict(found, row, predicted(photo), class_ids)


def test_infer_binary_data_in_and_out(
    client: TestClient, photos: list[bytes], predicted: Callable, class_ids: list[str]
):
    """The binary tensor data extension both ways: images as length-prefixed BYTES after the
    JSON, every output asked for as binary data; the same answers."""
    body, headers = binary_image_request(*photos[:2], parameters={"binary_data_output": True})
    answer = client.post(INFER, content=body, headers=headers)
    assert answer.headers["content-type"] == "application/octet-stream"
    header = json.loads(answer.content[: int(answer.headers["Inference-Header-Content-Length"])])
    assert all("data" not in output for output in header["outputs"])
    found = outputs(answer)
    for row, photo in enumerate(photos[:2]):
        _same_as_predict(found, row, predicted(photo), class_ids)


def test_infer_outputs_chosen_one_binary(client: TestClient, photos: list[bytes], predicted):
    """``outputs`` picks the outputs and their form: here the label in JSON and the
    probabilities as binary data, nothing else."""
    request = image_request(
        photos[0],
        outputs=[
            {"name": "label"},
            {"name": "probabilities", "parameters": {"binary_data": True}},
        ],
    )
    answer = client.post(INFER, json=request)
    found = outputs(answer)
    assert list(found) == ["label", "probabilities"]
    assert found["label"] == [predicted(photos[0])["label"].encode()]
    assert "Inference-Header-Content-Length" in answer.headers


def test_infer_tensor_equals_predict_of_the_same_crop(
    client: TestClient,
    serving_model: ServingModel,
    photos: list[bytes],
    predicted: Callable,
    class_ids: list[str],
):
    """The model input as FP32 (made as the service makes it for detect=false: the photo cut
    to the bundle's framing box, preprocessed): /predict?detect=false's answers, sent as JSON
    ([1, 3, H, W]: a row is 0.7 MB of JSON numbers) and as binary data ([2, 3, H, W])."""
    rows = []
    for photo in photos[:2]:
        with Image.open(io.BytesIO(photo)) as image:
            crop = whole_image(image.convert("RGB"), serving_model.meta.input.framing).crop
        rows.append(serving_model.preprocess(crop))
    x = np.stack(rows).astype(np.float32)
    as_json = outputs(client.post(INFER, json=tensor_request(x[:1])))
    item = {
        "name": "input",
        "datatype": "FP32",
        "shape": list(x.shape),
        "parameters": {"binary_data_size": x.nbytes},
    }
    body, headers = binary_body({"inputs": [item]}, [x.astype("<f4").tobytes()])
    as_binary = outputs(client.post(INFER, content=body, headers=headers))
    for found in (as_json, as_binary):
        for row, photo in enumerate(photos[: len(found["label"])]):
            _same_as_predict(found, row, predicted(photo, detect="false"), class_ids)
    assert len(as_binary["label"]) == 2


def test_infer_detect_and_face_parameters(
    client: TestClient, photos: list[bytes], predicted: Callable, class_ids: list[str]
):
    found = outputs(client.post(INFER, json=image_request(photos[1], parameters={"detect": False})))
    _same_as_predict(found, 0, predicted(photos[1], detect="false"), class_ids)
    found = outputs(client.post(INFER, json=image_request(photos[1], parameters={"face": 0})))
    _same_as_predict(found, 0, predicted(photos[1], face="0"), class_ids)
    beyond = client.post(INFER, json=image_request(photos[1], parameters={"face": 9}))
    assert (beyond.status_code, error_of(beyond)) == (422, "face_index_out_of_range")


# -- the explanation extension ---------------------------------------------------------------


@pytest.mark.parametrize(
    ("method", "params"),
    [("gradient", {}), ("occlusion", COARSE), ("gradcam", {"quality": True})],
)
def test_explain_equals_explain_route(
    client: TestClient,
    post_image: Callable[..., Response],
    photos: list[bytes],
    class_ids: list[str],
    method: str,
    params: dict,
):
    """The extension's map is /explain/{method}'s JSON grid, for the same photo, target and
    parameters; the prediction and, where graded, the quality report too."""
    parameters = {"method": method, "target": "keanu_reeves", **params}
    answer = client.post(EXPLAIN, json=image_request(photos[2], parameters=parameters))
    found = outputs(answer)
    query = "&".join(
        f"{k}={str(v).lower()}" for k, v in {"target": "keanu_reeves", **params}.items()
    )
    route = post_image(photos[2], path=f"/explain/{method}?{query}")
    assert route.status_code == 200, route.text
    expected = route.json()
    grid = np.asarray(expected["heatmap"]["values"], dtype=np.float32)
    assert (
        found["heatmap"].shape
        == grid.shape
        == (expected["heatmap"]["height"], expected["heatmap"]["width"])
    )
    np.testing.assert_allclose(found["heatmap"], grid, atol=2e-4)
    assert float(np.abs(found["heatmap"]).max()) > 0.5  # a map, not zeros
    assert found["target"] == [b"keanu_reeves"]
    assert found["label"] == [expected["label"].encode()]
    by_id = {item["id"]: item["probability"] for item in expected["probabilities"]}
    np.testing.assert_allclose(found["probabilities"][0], [by_id[i] for i in class_ids], atol=1e-6)
    document = answer.json()
    heatmap = next(o for o in document["outputs"] if o["name"] == "heatmap")
    assert heatmap["parameters"]["signed"] is expected["heatmap"]["signed"]
    assert heatmap["parameters"]["space"] == "upload"
    assert document["parameters"]["method"] == method
    if expected["quality"] is None:
        assert "quality" not in found
    else:
        quality = json.loads(found["quality"][0])
        assert quality["verdict"] == expected["quality"]["verdict"]
        assert document["parameters"]["quality_verdict"] == quality["verdict"]
        assert quality == expected["quality"]


def test_explain_tensor_gives_the_map_on_the_model_input(
    client: TestClient, serving_model: ServingModel, photos: list[bytes]
):
    """An FP32 model input is explained on itself: a map of the input's height and width."""
    with Image.open(io.BytesIO(photos[0])) as image:
        crop = whole_image(image.convert("RGB"), serving_model.meta.input.framing).crop
    x = serving_model.preprocess(crop)[None]
    answer = client.post(EXPLAIN, json={**tensor_request(x), "parameters": {"method": "gradient"}})
    found = outputs(answer)
    spec = serving_model.meta.input
    assert found["heatmap"].shape == (spec.height, spec.width)
    assert float(found["heatmap"].max()) == pytest.approx(1.0, abs=1e-4)
    heatmap = next(o for o in answer.json()["outputs"] if o["name"] == "heatmap")
    assert heatmap["parameters"]["space"] == "model_input"


def test_the_versioned_paths_answer_alike(
    client: TestClient, photos: list[bytes], version: str, predicted: Callable, class_ids: list[str]
):
    request = image_request(photos[3], parameters={"method": "gradient"})
    versioned = outputs(client.post(f"/v2/models/{MODEL}/versions/{version}/explain", json=request))
    np.testing.assert_array_equal(
        versioned["heatmap"], outputs(client.post(EXPLAIN, json=request))["heatmap"]
    )
    found = outputs(
        client.post(f"/v2/models/{MODEL}/versions/{version}/infer", json=image_request(photos[3]))
    )
    _same_as_predict(found, 0, predicted(photos[3]), class_ids)


def test_an_image_that_cannot_be_classified_is_named(client: TestClient, photos: list[bytes]):
    """Of three images, the third is text: the request is 415, its message says which."""
    text = b"not an image at all, just words\n" * 4
    answer = client.post(INFER, json=image_request(photos[0], photos[1], text))
    assert (answer.status_code, error_of(answer)) == (415, "unsupported_format")
    assert answer.json()["error"].startswith("unsupported_format: image 2: ")


def test_kserve_explain_path_is_the_extension(client: TestClient, photos: list[bytes]):
    """``POST /v1/models/{name}:explain`` (where KServe's InferenceRESTClient.explain posts)
    answers as ``/v2/models/{name}/explain``."""
    request = image_request(photos[3], parameters={"method": "gradient"})
    kserve = outputs(client.post(f"/v1/models/{MODEL}:explain", json=request))
    v2 = outputs(client.post(EXPLAIN, json=request))
    np.testing.assert_array_equal(kserve["heatmap"], v2["heatmap"])
    refused = client.post("/v1/models/nobody:explain", json=request)
    assert (refused.status_code, error_of(refused)) == (404, "unknown_model")


# -- bad requests ----------------------------------------------------------------------------


def _json(document: object) -> tuple[bytes, dict[str, str]]:
    return json.dumps(document).encode(), {"Content-Type": "application/json"}


def _image_item(data: list, **fields: object) -> dict:
    return {"name": "image", "datatype": "BYTES", "shape": [len(data)], "data": data, **fields}


def _nested(depth: int) -> list:
    value: list = []
    for _ in range(depth):
        value = [value]
    return value


TEXT = base64.b64encode(b"not an image at all, just words\n" * 4).decode()


def _bad_requests(face: str) -> list[tuple[str, str, tuple[bytes, dict[str, str]], int, str]]:
    """(case, path, (body, headers), status, code) of every kind of bad request."""
    good = {"inputs": [_image_item([face])]}
    blob = pack_bytes([base64.b64decode(face)])
    binary_item = {"name": "image", "datatype": "BYTES", "shape": [1]}
    binary_item["parameters"] = {"binary_data_size": len(blob)}
    header = json.dumps({"inputs": [binary_item]}).encode()
    return [
        ("malformed JSON", INFER, (b'{"inputs": [', {}), 400, "malformed_body"),
        ("not JSON at all", INFER, (b"\x89PNG\r\n", {}), 400, "malformed_body"),
        (
            "JSON nested past the parser",
            INFER,
            (b"[" * 50_000 + b"]" * 50_000, {}),
            400,
            "malformed_body",
        ),
        (
            "data nested deeply",
            INFER,
            _json({"inputs": [{**_image_item([face]), "data": _nested(500)}]}),
            422,
            "validation_error",
        ),
        ("no inputs", INFER, _json({"inputs": []}), 422, "validation_error"),
        ("inputs missing", INFER, _json({"id": "x"}), 422, "validation_error"),
        ("an unknown field", INFER, _json({**good, "extra": 1}), 422, "validation_error"),
        (
            "two inputs",
            INFER,
            _json({"inputs": [_image_item([face])] * 2}),
            422,
            "validation_error",
        ),
        (
            "wrong datatype",
            INFER,
            _json({"inputs": [{"name": "image", "datatype": "INT8", "shape": [1], "data": [1]}]}),
            422,
            "validation_error",
        ),
        (
            "BYTES named as the tensor",
            INFER,
            _json({"inputs": [{**_image_item([face]), "name": "input"}]}),
            422,
            "validation_error",
        ),
        (
            "shape says 2, data has 1",
            INFER,
            _json({"inputs": [{**_image_item([face]), "shape": [2]}]}),
            422,
            "validation_error",
        ),
        (
            "negative shape",
            INFER,
            _json({"inputs": [{**_image_item([face]), "shape": [-1]}]}),
            422,
            "validation_error",
        ),
        (
            "no data",
            INFER,
            _json({"inputs": [{"name": "image", "datatype": "BYTES", "shape": [1]}]}),
            422,
            "validation_error",
        ),
        (
            "not base64",
            INFER,
            _json({"inputs": [_image_item(["%%% not base64 %%%"])]}),
            422,
            "validation_error",
        ),
        (
            "a number as BYTES",
            INFER,
            _json({"inputs": [_image_item([12])]}),
            422,
            "validation_error",
        ),
        (
            "too many images",
            INFER,
            _json({"inputs": [_image_item([face] * 9)]}),
            422,
            "validation_error",
        ),
        (
            "FP32 of the wrong shape",
            INFER,
            _json(
                {
                    "inputs": [
                        {
                            "name": "input",
                            "datatype": "FP32",
                            "shape": [1, 3, 4, 4],
                            "data": [0.0] * 48,
                        }
                    ]
                }
            ),
            422,
            "validation_error",
        ),
        (
            "FP32 too few numbers",
            INFER,
            _json(
                {
                    "inputs": [
                        {
                            "name": "input",
                            "datatype": "FP32",
                            "shape": [1, 3, 150, 150],
                            "data": [0.0] * 10,
                        }
                    ]
                }
            ),
            422,
            "validation_error",
        ),
        (
            "FP32 not numbers",
            INFER,
            _json(
                {
                    "inputs": [
                        {"name": "input", "datatype": "FP32", "shape": [2], "data": ["a", "b"]}
                    ]
                }
            ),
            422,
            "validation_error",
        ),
        (
            "text, not an image",
            INFER,
            _json({"inputs": [_image_item([TEXT])]}),
            415,
            "unsupported_format",
        ),
        ("an empty image", INFER, _json({"inputs": [_image_item([""])]}), 400, "empty_file"),
        (
            "an unknown parameter",
            INFER,
            _json({**good, "parameters": {"window": 3}}),
            422,
            "validation_error",
        ),
        (
            "detect not a boolean",
            INFER,
            _json({**good, "parameters": {"detect": "yes"}}),
            422,
            "validation_error",
        ),
        (
            "a negative face",
            INFER,
            _json({**good, "parameters": {"face": -1}}),
            422,
            "validation_error",
        ),
        (
            "an unknown output",
            INFER,
            _json({**good, "outputs": [{"name": "logits"}]}),
            422,
            "validation_error",
        ),
        ("an unknown model", "/v2/models/nobody/infer", _json(good), 404, "unknown_model"),
        (
            "an unknown version",
            f"/v2/models/{MODEL}/versions/9.9.9/infer",
            _json(good),
            404,
            "unknown_model",
        ),
        (
            "header length not a number",
            INFER,
            (header + blob, {"Inference-Header-Content-Length": "many"}),
            400,
            "malformed_body",
        ),
        (
            "FP32 a number beyond float64",
            INFER,
            _json(
                {"inputs": [{"name": "input", "datatype": "FP32", "shape": [1], "data": [10**400]}]}
            ),
            422,
            "validation_error",
        ),
        (
            "FP32 no elements, in a shape no array can have",
            INFER,
            _json(
                {"inputs": [{"name": "input", "datatype": "FP32", "shape": [0, 2**70], "data": []}]}
            ),
            422,
            "validation_error",
        ),
        (
            "header length past the body",
            INFER,
            (header + blob, {"Inference-Header-Content-Length": str(len(header) + len(blob) + 1)}),
            400,
            "malformed_body",
        ),
        (
            "header length inside the JSON",
            INFER,
            (header + blob, {"Inference-Header-Content-Length": str(len(header) - 3)}),
            400,
            "malformed_body",
        ),
        (
            "binary data shorter than binary_data_size",
            INFER,
            (header + blob[:-10], {"Inference-Header-Content-Length": str(len(header))}),
            400,
            "malformed_body",
        ),
        (
            "binary data left over",
            INFER,
            (header + blob + b"extra", {"Inference-Header-Content-Length": str(len(header))}),
            400,
            "malformed_body",
        ),
        ("binary_data_size without the header", INFER, (header, {}), 400, "malformed_body"),
        (
            "a BYTES length past its data",
            INFER,
            (
                header + b"\xff\xff\x00\x00" + blob[4:],
                {"Inference-Header-Content-Length": str(len(header))},
            ),
            400,
            "malformed_body",
        ),
        ("explain without a method", EXPLAIN, _json(good), 422, "validation_error"),
        (
            "an unknown method",
            EXPLAIN,
            _json({**good, "parameters": {"method": "magic"}}),
            404,
            "unknown_method",
        ),
        (
            "another method's parameter",
            EXPLAIN,
            _json({**good, "parameters": {"method": "gradient", "window": 8}}),
            422,
            "validation_error",
        ),
        (
            "a parameter out of range",
            EXPLAIN,
            _json({**good, "parameters": {"method": "occlusion", "window": 0}}),
            422,
            "validation_error",
        ),
        (
            "too costly",
            EXPLAIN,
            _json({**good, "parameters": {"method": "rise", "num_masks": 4000}}),
            422,
            "too_costly",
        ),
        (
            "an unknown target",
            EXPLAIN,
            _json({**good, "parameters": {"method": "gradient", "target": "nobody"}}),
            422,
            "unknown_class",
        ),
        (
            "two images to explain",
            EXPLAIN,
            _json(
                {
                    "inputs": [
                        _image_item([face, face]),
                    ],
                    "parameters": {"method": "gradient"},
                }
            ),
            422,
            "validation_error",
        ),
    ]


@pytest.fixture(scope="module")
def bad_requests(
    photos: list[bytes],
) -> dict[str, tuple[str, tuple[bytes, dict[str, str]], int, str]]:
    face = base64.b64encode(photos[0]).decode()
    return {
        case: (path, body, status, code) for case, path, body, status, code in _bad_requests(face)
    }


BAD_CASES = [case for case, *_ in _bad_requests(base64.b64encode(b"x").decode())]


@pytest.mark.parametrize("case", BAD_CASES)
def test_bad_request_is_a_clear_protocol_error(
    client: TestClient, bad_requests: dict, photos: list[bytes], case: str
):
    path, (body, headers), status, code = bad_requests[case]
    answer = client.post(path, content=body, headers=headers)
    assert answer.status_code == status, answer.text
    assert error_of(answer) == code
    assert len(answer.json()["error"]) > len(code) + 10  # says what is wrong
    assert client.post(INFER, json=image_request(photos[0])).status_code == 200


def test_oversize_body_and_missing_key_in_the_protocol_shape(client: TestClient):
    too_big = json.dumps(image_request(b"\0" * MAX_UPLOAD_BYTES)).encode()
    answer = client.post(INFER, content=too_big, headers={"Content-Type": "application/json"})
    assert (answer.status_code, error_of(answer)) == (413, "file_too_large")
    for path in (INFER, EXPLAIN, f"/v2/models/{MODEL}"):
        keyless = client.request(
            "POST" if path != f"/v2/models/{MODEL}" else "GET",
            path,
            json=image_request(b"x"),
            headers={"X-API-Key": ""},
        )
        assert (keyless.status_code, error_of(keyless)) == (401, "missing_api_key"), path
    wrong = client.get(f"/v2/models/{MODEL}", headers={"X-API-Key": API_KEY + "x"})
    assert (wrong.status_code, error_of(wrong)) == (401, "invalid_api_key")
    # health and server metadata need no key, as /healthz and /readyz
    assert client.get("/v2/health/ready", headers={"X-API-Key": ""}).status_code == 200


def test_errors_elsewhere_keep_the_service_shape(client: TestClient):
    answer = client.get("/v2/nowhere")
    assert (answer.status_code, error_of(answer)) == (404, "not_found")
    assert client.get("/nowhere").json()["error"]["code"] == "not_found"


def test_metrics_count_protocol_requests(client: TestClient, photos: list[bytes]):
    client.post(INFER, json=image_request(photos[0]))
    text = client.get("/metrics").text
    assert 'endpoint="/v2/models/{name}/infer"' in text


def test_a_page_of_an_allowed_origin_may_read_the_binary_split(client: TestClient, photos):
    body, headers = binary_image_request(photos[0], parameters={"binary_data_output": True})
    answer = client.post(INFER, content=body, headers={**headers, "Origin": WEB_ORIGIN})
    exposed = answer.headers["access-control-expose-headers"].lower()
    assert "inference-header-content-length" in exposed
    assert int(answer.headers["Inference-Header-Content-Length"]) < len(answer.content)


@pytest.mark.parametrize("length", ["\u00b2", "1\u00b9", "\u0663", " 12x", "-5", "0"])
def test_a_header_length_that_is_not_plain_ascii_digits_is_malformed(length: str):
    """``str.isdigit`` holds for superscript digits, which ``int`` refuses (a 500 once); the
    length must be ASCII digits within the body."""
    from service.api.v2_tensors import read_request
    from service.errors import MalformedBody

    with pytest.raises(MalformedBody, match="is not a length within the body"):
        read_request(b'{"inputs": []}' + b"\0" * 64, length)
