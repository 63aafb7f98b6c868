"""POST /explain/{method} and its aliases /saliency, /occlusion, /lime on real face photos:
formats, targets, limits, error codes, cache; GET /explain."""

from __future__ import annotations

import io

import image_bytes as ib
import numpy as np
import pytest
from PIL import Image

from service.explain import EXPLAINERS, GRADIENT_METHODS

# Cheap parameters per method (defaults are timed by bench/bench_explain.py); a method not
# listed here runs with its defaults, so a new method of the registry is tested with no edit.
CHEAP = {
    "smoothgrad": {"samples": 4},
    "integrated_gradients": {"steps": 8},
    "occlusion": {"window": 50, "stride": 25},
    "lime": {"num_samples": 32, "num_segments": 20},
    "rise": {"num_masks": 64},
}
CASES = [(f"/explain/{name}", CHEAP.get(name, {})) for name in EXPLAINERS]
# The documented names of the same code path.
ALIASES = [
    *(("/saliency", {"method": name, **CHEAP.get(name, {})}) for name in GRADIENT_METHODS),
    ("/occlusion", CHEAP["occlusion"]),
    ("/lime", CHEAP["lime"]),
]
EVERY_PATH = [path for path, _ in CASES + ALIASES if path != "/saliency"] + ["/saliency"]


def _method(path: str, params: dict) -> str:
    return str(params.get("method", path.rsplit("/", 1)[-1]))


def _ids(cases: list[tuple[str, dict]]) -> list[str]:
    return [f"{path}:{_method(path, params)}" for path, params in cases]


@pytest.fixture(scope="module")
def explain(client):
    """``explain(path, data, **params)``: POST ``data`` as ``file`` with query ``params``."""

    def post(path: str, data: bytes, **params: object):
        return client.post(path, params=params, files={"file": ("face.png", data, "image/png")})

    return post


def _png(response) -> Image.Image:
    assert response.status_code == 200, response.text
    assert response.headers["content-type"] == "image/png"
    image = Image.open(io.BytesIO(response.content))
    image.load()
    return image


@pytest.mark.parametrize(("path", "params"), CASES + ALIASES, ids=_ids(CASES + ALIASES))
def test_json_heatmap_in_image_coordinates(explain, face_bytes, path, params):
    response = explain(path, face_bytes, **params)

    assert response.status_code == 200, response.text
    body = response.json()
    method = _method(path, params)
    assert body["method"] == method
    width, height = body["image"]["width"], body["image"]["height"]
    heatmap = body["heatmap"]
    assert (heatmap["width"], heatmap["height"]) == (width, height)
    values = np.array(heatmap["values"])
    assert values.shape == (height, width) and np.isfinite(values).all()
    assert heatmap["signed"] == EXPLAINERS[method].signed
    low, high = heatmap["value_range"]
    assert (low, high) == ((-1, 1) if heatmap["signed"] else (0, 1))
    assert low <= values.min() and values.max() <= high and values.max() > 0
    assert body["target"]["id"] == body["label"]  # default: the predicted class
    assert {k: v for k, v in params.items() if k != "method"}.items() <= body["parameters"].items()
    assert body["timings"]["total_ms"] >= body["timings"]["explain_ms"] >= 0


@pytest.mark.parametrize(("path", "params"), CASES, ids=_ids(CASES))
def test_png_is_rgba_and_overlay_rgb_at_the_upload_size(explain, path, params, held_out_faces):
    path_on_disk, _ = held_out_faces[3]
    with Image.open(path_on_disk) as photo:
        wide = ib.encode(photo.convert("RGB").resize((300, 200)), "JPEG", quality=95)

    heat = _png(explain(path, wide, format="png", **params))
    overlay = _png(explain(path, wide, format="overlay", **params))

    assert (heat.mode, heat.size) == ("RGBA", (300, 200))
    assert (overlay.mode, overlay.size) == ("RGB", (300, 200))


def test_json_grid_of_a_large_upload_is_scaled_down(explain, held_out_faces):
    with Image.open(held_out_faces[0][0]) as photo:
        large = ib.encode(photo.convert("RGB").resize((640, 480)), "PNG")

    heatmap = explain("/saliency", large).json()["heatmap"]

    assert (heatmap["width"], heatmap["height"]) == (256, 192)
    assert np.array(heatmap["values"]).shape == (192, 256)


@pytest.mark.parametrize(("path", "params"), CASES, ids=_ids(CASES))
def test_target_selects_the_class_explained(explain, face_bytes, path, params, serving_model):
    default = explain(path, face_bytes, **params).json()
    other = next(c.id for c in serving_model.meta.classes if c.id != default["label"])

    chosen = explain(path, face_bytes, target=other, **params).json()

    assert chosen["target"]["id"] == other and chosen["label"] == default["label"]
    assert not np.allclose(chosen["heatmap"]["values"], default["heatmap"]["values"], atol=1e-3)


def test_repeated_request_comes_from_the_cache(explain, held_out_faces):
    data = held_out_faces[4][0].read_bytes()
    params = {"window": 40, "stride": 20, "baseline": "blur"}

    first = explain("/occlusion", data, **params).json()
    second = explain("/occlusion", data, **params).json()
    as_png = explain("/occlusion", data, format="png", **params)

    assert (first["cached"], second["cached"]) == (False, True)
    assert second["timings"]["explain_ms"] == 0
    assert second["heatmap"] == first["heatmap"]
    assert as_png.status_code == 200


def test_same_lime_seed_same_map(explain, held_out_faces):
    data = held_out_faces[5][0].read_bytes()
    params = {"num_samples": 32, "num_segments": 16, "seed": 5}

    first = explain("/lime", data, **params).json()
    # the cache must not be what makes them equal: change a parameter that does not alter it
    second = explain("/lime", data, top_features=200, **params).json()  # keeps all
    other_seed = explain("/lime", data, **{**params, "seed": 6}).json()

    assert second["cached"] is False
    assert second["heatmap"]["values"] == first["heatmap"]["values"]
    assert other_seed["heatmap"]["values"] != first["heatmap"]["values"]


# (path, params, part of the message)
INVALID = [
    ("/occlusion", {"window": 97}, "query.window: Input should be less than or equal to 96"),
    ("/occlusion", {"window": 30, "stride": 40}, "stride (40) must not exceed window (30)"),
    (
        "/occlusion",
        {"baseline": "noise"},
        "query.baseline: Input should be 'zero', 'mean' or 'blur'",
    ),
    (
        "/lime",
        {"num_samples": 5000},
        "query.num_samples: Input should be less than or equal to 2000",
    ),
    (
        "/lime",
        {"num_segments": 2},
        "query.num_segments: Input should be greater than or equal to 4",
    ),
    ("/saliency", {"method": "lime"}, "query.method: Input should be"),
    ("/saliency", {"samples": 4}, "samples does not apply to method=gradient"),
    # another alias's method's parameter, which the alias's own query model does not list
    (
        "/saliency",
        {"method": "smoothgrad", "samples": 2, "window": 4},
        "window does not apply to method=smoothgrad",
    ),
    ("/occlusion", {"num_samples": 16}, "num_samples does not apply to method=occlusion"),
    ("/lime", {"window": 4}, "window does not apply to method=lime"),
    ("/saliency", {"method": "smoothgrad", "samples": 65}, "less than or equal to 64"),
    ("/saliency", {"format": "gif"}, "query.format: Input should be 'json', 'png' or 'overlay'"),
    (
        "/explain/occlusion",
        {"window": 97},
        "query.window: Input should be less than or equal to 96",
    ),
    ("/explain/occlusion", {"window": 30, "stride": 40}, "stride (40) must not exceed window (30)"),
    ("/explain/occlusion", {"num_samples": 32}, "num_samples does not apply to method=occlusion"),
    (
        "/occlusion",
        {"strategy": "incremental"},
        "query.strategy: Input should be 'exhaustive' or 'coarse_to_fine'",
    ),
    ("/occlusion", {"refine": 1.5}, "query.refine: Input should be less than or equal to 1"),
    ("/explain/gradient", {"samples": 4}, "samples does not apply to method=gradient"),
    ("/explain/smoothgrad", {"samples": "many"}, "query.samples: Input should be a valid integer"),
    ("/explain/gradcam", {"format": "gif"}, "query.format: Input should be 'json', 'png' or"),
]


@pytest.mark.parametrize(("path", "params", "message"), INVALID)
def test_invalid_parameters_are_422_with_the_limit(explain, face_bytes, path, params, message):
    response = explain(path, face_bytes, **params)

    assert response.status_code == 422
    error = response.json()["error"]
    assert error["code"] == "validation_error"
    assert message in error["message"]


@pytest.mark.parametrize("path", ["/saliency", "/occlusion", "/lime", "/explain/gradient"])
def test_bad_upload_and_missing_key_get_their_codes(client, explain, path):
    gif = ib.encode(ib.noise_image(), "GIF")
    assert explain(path, gif).json()["error"]["code"] == "unsupported_format"

    response = client.post(
        path, files={"file": ("f.png", b"x", "image/png")}, headers={"X-API-Key": ""}
    )
    assert response.status_code == 401
    assert response.json()["error"]["code"] == "missing_api_key"


@pytest.mark.parametrize("path", EVERY_PATH)
def test_an_unknown_target_is_422_unknown_class_everywhere(explain, face_bytes, path):
    response = explain(path, face_bytes, target="nobody")

    assert response.status_code == 422
    error = response.json()["error"]
    assert error["code"] == "unknown_class"
    assert "'nobody' is not a class id; valid: gwyneth_paltrow" in error["message"]


@pytest.mark.parametrize(
    ("path", "params"),
    [
        ("/saliency", {"method": "gradcam", "layer": "nope"}),
        ("/explain/gradcam", {"layer": "nope"}),
    ],
)
def test_an_unknown_gradcam_layer_is_422_unknown_layer(explain, face_bytes, path, params):
    response = explain(path, face_bytes, **params)

    assert response.status_code == 422
    error = response.json()["error"]
    assert error["code"] == "unknown_layer"
    assert "layer 'nope' is not an activation of the model; valid: stem" in error["message"]


def test_an_unknown_method_is_404_listing_the_valid_ones(client, explain, face_bytes):
    response = explain("/explain/shap", face_bytes)

    assert response.status_code == 404
    error = response.json()["error"]
    assert error["code"] == "unknown_method"
    assert error["message"].endswith("valid: " + ", ".join(EXPLAINERS))
    keyless = client.post(
        "/explain/shap", files={"file": ("f.png", b"x", "image/png")}, headers={"X-API-Key": ""}
    )
    assert keyless.json()["error"]["code"] == "missing_api_key"


def test_get_explain_lists_every_method_of_the_registry(client):
    response = client.get("/explain")

    assert response.status_code == 200
    body = response.json()
    assert body["common_parameters"] == [
        "target",
        "contrast",
        "format",
        "quality",
        "detect",
        "face",
    ]
    assert [method["name"] for method in body["methods"]] == list(EXPLAINERS)
    for method in body["methods"]:
        explainer = EXPLAINERS[method["name"]]
        assert method["signed"] == explainer.signed and method["units"] == explainer.units
        assert method["value_range"] == ([-1, 1] if explainer.signed else [0, 1])
        assert method["needs_twin"] == explainer.needs_twin and method["shows"]
        assert method["anytime"] == explainer.anytime
        properties = method["parameters"].get("properties", {})
        assert "batch_size" not in properties  # a server-side knob, never offered
        for name, schema in properties.items():
            field = explainer.Params.model_fields[name]
            assert schema.get("default") == field.default, (method["name"], name)
        # every method all three, but fastshap, whose explainer learned class logits only
        assert method["explains"] == ["class", "contrast"] + (
            ["open_set"] if explainer.explains_open_set else []
        )
        assert method["available"] is True and method["unavailable"] is None
    # a contrast is signed by nature: only Grad-CAM (its ReLU keeps the target's side) is not
    contrast_signed = {m["name"] for m in body["methods"] if m["contrast_signed"]}
    assert contrast_signed == set(EXPLAINERS) - {"gradcam", "layercam"}
    occlusion = next(m for m in body["methods"] if m["name"] == "occlusion")
    window = occlusion["parameters"]["properties"]["window"]
    assert (window["minimum"], window["maximum"], window["default"]) == (4, 96, 24)


def test_an_alias_and_the_generic_endpoint_share_one_code_path(explain, held_out_faces):
    data = held_out_faces[6][0].read_bytes()

    alias = explain("/saliency", data, method="gradcam").json()
    generic = explain("/explain/gradcam", data).json()

    assert (alias["cached"], generic["cached"]) == (False, True)  # one cache key, one result
    assert generic["heatmap"] == alias["heatmap"] and generic["method"] == "gradcam"


def _face_in_scene(held_out_faces) -> tuple[bytes, tuple[int, int, int, int]]:
    """A face crop pasted, slightly rotated, into a 640x480 face-free scene; and where."""
    rng = np.random.default_rng(3)
    noise = rng.integers(0, 256, (60, 80, 3), dtype=np.uint8)
    scene = Image.fromarray(noise).resize((640, 480), Image.Resampling.BICUBIC)
    face = Image.open(held_out_faces[0][0]).convert("RGB").resize((200, 200)).rotate(10)
    scene.paste(face, (380, 140))
    return ib.encode(scene, "PNG"), (380, 140, 580, 340)


def test_the_face_predict_uses_is_explained_and_mapped_back(explain, post_image, held_out_faces):
    data, (x0, y0, x1, y1) = _face_in_scene(held_out_faces)
    predicted = post_image(data).json()

    body = explain("/saliency", data, method="gradcam").json()
    heat = np.asarray(_png(explain("/saliency", data, method="gradcam", format="png")))

    assert body["face_box"] == predicted["face_box"] and body["face_box"]["source"] == "detector"
    assert body["face_index"] == predicted["face_index"] == 0
    assert body["label"] == predicted["label"]
    assert body["probability"] == pytest.approx(predicted["probability"], abs=1e-4)
    values = np.array(body["heatmap"]["values"])  # 256 x 192 grid over the 640 x 480 photo
    assert values.shape == (192, 256)
    row, column = np.unravel_index(np.argmax(values), values.shape)
    assert y0 <= row / 0.4 <= y1 and x0 <= column / 0.4 <= x1  # the peak is on the face
    assert values[:, : round(300 * 0.4)].max() == 0  # nothing far from the aligned crop
    assert heat.shape == (480, 640, 4)
    assert heat[:, :300, 3].max() == 0 and heat[y0:y1, x0:x1, 3].max() > 150


def test_detect_false_explains_the_whole_upload(explain, face_bytes):
    body = explain("/occlusion", face_bytes, detect="false", window=50, stride=25).json()

    assert body["face_box"]["source"] == "whole_image" and body["face_index"] is None


def test_no_face_is_422_no_face(explain):
    blank = ib.encode(ib.noise_image((320, 240)), "PNG")

    response = explain("/lime", blank, num_samples=32)

    assert response.status_code == 422
    assert response.json()["error"]["code"] == "no_face"
