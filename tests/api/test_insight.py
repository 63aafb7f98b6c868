"""/insight/*: filters, activation maps, receptive fields, top patches and synthesised images of
the real default bundle, on real photos."""

from __future__ import annotations

import base64
import io
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from receptive_field_probe import gradient_extent

from service.common.softmax import softmax
from service.faces.aligned import whole_image
from service.insight.grid import FILTER_TILE, MAP_TILE, GridLayout

ARTIFACTS = Path(__file__).resolve().parents[1] / "artifacts" / "insight"
LAYERS = ["stem", "layer1", "layer2", "layer3", "layer4", "layer5"]
STORED_LAYERS = ["stem", "layer1", "layer2"]


def _image(response) -> Image.Image:
    assert response.status_code == 200, response.text
    assert response.headers["content-type"] == "image/png"
    return Image.open(io.BytesIO(response.content))


def _save(name: str, data: bytes) -> None:
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    (ARTIFACTS / name).write_bytes(data)


def _error(response, status: int, code: str) -> str:
    assert response.status_code == status, response.text
    assert response.json()["error"]["code"] == code
    return response.json()["error"]["message"]


@pytest.mark.parametrize("layer", LAYERS)
def test_filter_grid_has_the_documented_size(client, serving_model, layer):
    image = _image(client.get("/insight/filters", params={"layer": layer}))

    channels = {info.name: info.channels for info in serving_model.meta.layers}[layer]
    kernel = 7 if layer == "stem" else 3
    layout = GridLayout.of(channels, kernel * (FILTER_TILE // kernel))
    assert image.size == (layout.width, layout.height)
    assert image.mode == "RGB"
    pixels = np.asarray(image).astype(int)
    colourful = np.abs(pixels[..., 0] - pixels[..., 1]).max() > 0
    assert colourful == (layer == "stem")  # RGB filters in colour, deeper ones grey
    if layer in ("stem", "layer3"):
        _save(
            f"filters_{layer}.png", client.get("/insight/filters", params={"layer": layer}).content
        )


def test_stem_and_layer3_grids_measure_what_the_api_documents(client):
    # stem: 32 filters of 7x7 at 6 px per weight -> 6 x 6 tiles of 42 px; layer3: 128 of 3x3
    # at 16 px -> 12 columns x 11 rows of 48 px; 2 px gaps.
    assert _image(client.get("/insight/filters?layer=stem")).size == (266, 266)
    assert _image(client.get("/insight/filters?layer=layer3")).size == (602, 552)


def _dlib_fields() -> list[tuple[int, int, float]]:
    """(size, jump, start) per layer by the textbook recurrence over the longest path (Dumoulin
    & Visin 2016): r += (k - 1) * j; start += ((k - 1) / 2 - p) * j; j *= s. dlib's ResNet:
    conv 7/2 pad 0 and max-pool 3/2; stages of 3, 4, 3, 3, 1 blocks of two 3x3 convs, the first
    of every stage but the first with stride 2 and no padding, every other one padded by 1."""
    size, jump, start, fields = 1, 1, 0.0, []

    def window(k: int, s: int, p: int) -> None:
        nonlocal size, jump, start
        size += (k - 1) * jump
        start += ((k - 1) / 2 - p) * jump
        jump *= s

    window(7, 2, 0)
    window(3, 2, 0)
    fields.append((size, jump, start))
    for index, blocks in enumerate((3, 4, 3, 3, 1)):
        for block in range(blocks):
            window(3, 2, 0) if (index > 0 and block == 0) else window(3, 1, 1)
            window(3, 1, 1)
        fields.append((size, jump, start))
    return fields


def test_receptive_fields_match_the_analytic_formula(client):
    body = client.get("/insight/receptive-field").json()

    assert (body["input_height"], body["input_width"]) == (150, 150)
    assert [layer["name"] for layer in body["layers"]] == LAYERS
    assert [
        (f["rows"]["size"], f["rows"]["jump"], f["rows"]["start"]) for f in body["layers"]
    ] == _dlib_fields()
    assert [f["rows"]["size"] for f in body["layers"]] == [11, 59, 179, 355, 707, 899]
    for layer in body["layers"]:
        assert layer["rows"] == layer["cols"]
        # 150 px through a 7x7/2 conv (72 units) and a 3x3/2 pool (35) reach pixels 0..146 only
        assert (layer["rows"]["first"], layer["rows"]["last"]) == (0, 146)
    assert [(f["channels"], f["height"]) for f in body["layers"]] == [
        (32, 35),
        (32, 35),
        (64, 17),
        (128, 8),
        (256, 4),
        (256, 2),
    ]


def test_receptive_fields_match_a_gradient_probe(client, serving_model, held_out_faces):
    """The input pixels where a unit's gradient is non-zero must span exactly its analytic
    field clipped to the pixels the network sees (``first .. last``): never more, since nothing
    outside can reach the unit; less only where weights are exactly zero (none are here) or
    where ReLUs and max-pools are inactive for every input tried, hence several inputs."""
    fields = client.app.state.service.inspector.fields
    faces = [
        serving_model.preprocess(Image.open(path).convert("RGB")) for path, _ in held_out_faces[:4]
    ]
    noise = torch.randn(4, 3, 150, 150, generator=torch.Generator().manual_seed(0)) * 0.2
    inputs = torch.cat([torch.from_numpy(np.stack(faces)), noise])

    for name, field in fields.items():
        for row, col in ((field.shape[1] // 2, field.shape[2] // 2), (0, 0)):
            measured = gradient_extent(serving_model.twin, inputs, name, row, col)
            assert measured == (field.rows.seen(row), field.cols.seen(col)), (name, row, col)


def test_activation_maps_of_a_real_photo_are_non_trivial(client, post_image, held_out_faces):
    photo = held_out_faces[0][0].read_bytes()
    response = post_image(photo, path="/insight/activations?layer=layer2&top=9&format=json")

    assert response.status_code == 200, response.text
    body = response.json()
    assert body["layer"] == "layer2" and body["channels"] == 64
    maps = body["maps"]
    assert len(maps) == 9 and len({m["channel"] for m in maps}) == 9
    means = [m["mean"] for m in maps]
    assert means == sorted(means, reverse=True) and means[-1] > 0
    values = np.array([m["values"] for m in maps])
    assert values.shape == (9, 17, 17)
    assert (values.std(axis=(1, 2)) > 0.05 * values.mean(axis=(1, 2))).all()  # structure, not flat
    assert np.allclose(values.mean(axis=(1, 2)), means, atol=1e-3)
    assert min(np.abs(values[i] - values[j]).max() for i in range(9) for j in range(i)) > 0
    # the face /predict uses
    assert body["face_box"] == post_image(photo).json()["face_box"]
    assert body["face_index"] == 0

    png = post_image(photo, path="/insight/activations?layer=layer2&top=9")
    image = _image(png)
    layout = GridLayout.of(9, 17 * (MAP_TILE // 17))
    assert (
        image.size
        == (layout.width, layout.height)
        == (body["grid"]["width"], body["grid"]["height"])
    )
    assert png.headers["x-channels"] == ",".join(str(m["channel"]) for m in maps)
    _save("activations_layer2.png", png.content)


def test_other_web_origins_may_read_the_channels_header(client, api_settings, face_bytes):
    origin = api_settings.cors_origins[0]
    response = client.post(
        "/insight/activations?layer=stem&top=4",
        files={"file": ("f.png", face_bytes, "image/png")},
        headers={"Origin": origin},
    )

    assert response.status_code == 200
    assert response.headers["access-control-allow-origin"] == origin
    assert "x-channels" in response.headers["access-control-expose-headers"].lower()


def test_activation_maps_differ_between_faces(post_image, held_out_faces):
    first, other = (
        post_image(
            path.read_bytes(), path="/insight/activations?layer=layer3&top=128&format=json"
        ).json()
        for path, _ in (held_out_faces[0], held_out_faces[-1])
    )

    by_channel = [
        {m["channel"]: np.array(m["values"]) for m in body["maps"]} for body in (first, other)
    ]
    assert len(by_channel[0]) == 128
    difference = max(np.abs(by_channel[0][c] - by_channel[1][c]).max() for c in range(128))
    assert difference > 1.0


def test_top_patches_come_from_the_training_split_only(client, default_bundle):
    split = json.loads((default_bundle / "split.json").read_text())["splits"]
    train = {rel for rel, _ in split["train"]}
    held_out = {rel for name in ("val", "test") for rel, _ in split[name]}
    fields = {
        f["name"]: f["rows"]["size"]
        for f in client.get("/insight/receptive-field").json()["layers"]
    }

    for layer, channels in (("stem", 32), ("layer1", 32), ("layer2", 64)):
        for channel in range(channels):
            body = client.get(
                "/insight/top-patches",
                params={"layer": layer, "channel": channel, "format": "json"},
            ).json()
            patches = body["patches"]
            assert len(patches) == 9 and body["split"] == "train" and body["images"] == len(train)
            images = [p["image"] for p in patches]
            assert set(images) <= train and not set(images) & held_out
            assert len(set(images)) == 9  # one patch per image
            activations = [p["activation"] for p in patches]
            assert activations == sorted(activations, reverse=True)
            assert all(
                p["box"][2] - p["box"][0] == p["box"][3] - p["box"][1] == fields[layer]
                for p in patches
            )
            assert body["field_size"] == fields[layer]


def test_a_stored_patch_is_where_its_channel_peaks(client, serving_model, celebs_root):
    body = client.get("/insight/top-patches?layer=layer1&channel=7&format=json").json()
    best = body["patches"][0]

    image = Image.open(celebs_root / best["image"]).convert("RGB")
    x = serving_model.preprocess(whole_image(image, serving_model.meta.input.framing).crop)
    with torch.no_grad():
        _, activations = serving_model.twin(torch.from_numpy(x[None]))
    channel = activations["layer1"][0, 7]
    assert float(channel[best["row"], best["col"]]) == pytest.approx(best["activation"], abs=1e-3)
    assert float(channel.max()) == pytest.approx(best["activation"], abs=1e-3)


@pytest.mark.parametrize(("layer", "tile"), [("stem", 11 * 8), ("layer1", 59), ("layer2", 64)])
def test_top_patch_grids_have_the_documented_size(client, layer, tile):
    response = client.get("/insight/top-patches", params={"layer": layer, "channel": 3})
    image = _image(response)

    layout = GridLayout.of(9, tile)
    assert image.size == (layout.width, layout.height)
    _save(f"top_patches_{layer}_3.png", response.content)


def test_synthesised_class_image_raises_the_class_score(client, serving_model):
    response = client.get("/insight/maximize", params={"class": "keanu_reeves", "format": "json"})

    assert response.status_code == 200, response.text
    body = response.json()
    assert body["objective"] == "class keanu_reeves" and body["steps"] == 48
    assert "stopped_early" not in body and "max_seconds" not in body["parameters"]
    assert body["score_end"] > body["score_start"] + 8  # logits
    assert body["probability_end"] / body["probability_start"] >= 3
    assert body["probability_end"] > 0.9
    png = base64.b64decode(body["image"].removeprefix("data:image/png;base64,"))
    assert Image.open(io.BytesIO(png)).size == (150, 150)
    _save("maximize_keanu_reeves.png", png)
    # the returned image itself does it: it is a model input (sent back with detect=false it
    # would be cut to the bundle's framing box again), and the ONNX model agrees on it
    x = serving_model.preprocess(Image.open(io.BytesIO(png)).convert("RGB"))
    probabilities = softmax(serving_model.engine.run(x[None]))[0]
    classes = [c.id for c in serving_model.meta.classes]
    assert classes[int(probabilities.argmax())] == "keanu_reeves"
    # the synthesis ran on the FP32 twin; an INT8 graph that serves agrees to its own tolerance
    agreement = 1e-3 if serving_model.report.precision == "fp32" else 1e-2
    assert float(probabilities.max()) == pytest.approx(body["probability_end"], abs=agreement)

    again = client.get(
        "/insight/maximize", params={"class": "keanu_reeves", "format": "json"}
    ).json()
    assert again["cached"] and not body["cached"] and again["image"] == body["image"]
    assert _image(client.get("/insight/maximize", params={"class": "keanu_reeves"})).size == (
        150,
        150,
    )


def test_synthesised_channel_image_raises_the_channel(client):
    body = client.get("/insight/maximize?layer=layer3&channel=5&steps=12&format=json").json()

    assert body["objective"] == "layer3 channel 5" and body["steps"] == 12
    assert body["score_end"] > 1.5 * body["score_start"] > 0
    assert body["probability_start"] is None


@pytest.mark.parametrize(
    "request_",
    [
        ("get", "/insight/filters?layer=layer9"),
        ("post", "/insight/activations?layer=fc"),
        ("get", "/insight/top-patches?layer=conv1&channel=0"),
        ("get", "/insight/maximize?layer=layer9&channel=0"),
    ],
)
def test_unknown_layer_is_422_listing_the_valid_ones(client, post_image, face_bytes, request_):
    method, url = request_
    response = post_image(face_bytes, path=url) if method == "post" else client.get(url)

    message = _error(response, 422, "unknown_layer")
    assert "stem, layer1" in message


def test_top_patches_of_a_layer_not_stored_list_the_stored_ones(client):
    message = _error(
        client.get("/insight/top-patches?layer=layer3&channel=0"), 422, "unknown_layer"
    )

    assert message.endswith("stem, layer1, layer2")


@pytest.mark.parametrize(
    "url",
    ["/insight/top-patches?layer=stem&channel=32", "/insight/maximize?layer=layer5&channel=256"],
)
def test_unknown_channel_is_422_with_the_range(client, url):
    message = _error(client.get(url), 422, "unknown_channel")

    assert "0.." in message


def test_activations_refuse_more_channels_than_any_layer_has(post_image, face_bytes):
    message = _error(
        post_image(face_bytes, path="/insight/activations?layer=stem&top=257"),
        422,
        "validation_error",
    )

    assert "256" in message


def test_maximize_refuses_unknown_classes_and_out_of_range_budgets(client):
    assert "tom_hanks" in _error(client.get("/insight/maximize?class=nobody"), 422, "unknown_class")
    assert "300" in _error(
        client.get("/insight/maximize?class=tom_hanks&steps=301"), 422, "validation_error"
    )
    assert "60" in _error(
        client.get("/insight/maximize?class=tom_hanks&max_seconds=61"), 422, "validation_error"
    )
    _error(
        client.get("/insight/maximize?class=tom_hanks&layer=stem&channel=0"),
        422,
        "validation_error",
    )
    _error(client.get("/insight/maximize"), 422, "validation_error")
    _error(client.get("/insight/activations?layer=stem"), 405, "method_not_allowed")


def test_a_bundle_without_top_patches_says_how_to_make_them(client, serving_model, monkeypatch):
    monkeypatch.setitem(client.app.state.service.inspector.__dict__, "top_patches", None)

    message = _error(client.get("/insight/top-patches?layer=stem&channel=0"), 404, "no_top_patches")
    assert "python -m training insight" in message


def test_insight_needs_the_api_key(client):
    anonymous = client.get("/insight/receptive-field", headers={"X-API-Key": ""})

    _error(anonymous, 401, "missing_api_key")
