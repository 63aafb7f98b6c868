"""How much to believe a map, over HTTP: the quality report in explanation answers and jobs,
``POST /explain/evaluate`` grading maps made elsewhere, and its bad inputs."""

from __future__ import annotations

import io
import json
import struct
import zlib
from pathlib import Path

import numpy as np
import pytest
from fastapi.testclient import TestClient
from PIL import Image

from service.explain import EXPLAINERS
from service.explain.faithfulness import area_under
from service.explain.quality import RULE, STEPS
from tests.api.job_polling import wait_for

pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning")


def png_bytes(image: Image.Image) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, "PNG")
    return buffer.getvalue()


def evaluate(client: TestClient, photo: bytes, map_bytes: bytes, name: str = "map.json", **params):
    return client.post(
        "/explain/evaluate",
        params=params,
        files={"file": ("photo.png", photo), "map": (name, map_bytes)},
    )


def png_claiming(width: int, height: int) -> bytes:
    """A greyscale PNG whose header claims ``width`` x ``height`` pixels, with no pixel data
    (a decompression bomb's header, 67 bytes)."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return (
            struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))
        )

    header = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", header)
        + chunk(b"IDAT", zlib.compress(b""))
        + chunk(b"IEND", b"")
    )


def grid_json(values: np.ndarray) -> bytes:
    return json.dumps(np.asarray(values).tolist()).encode()


def verdicts(client: TestClient) -> dict[tuple[str, str], float]:
    counts = {}
    for line in client.get("/metrics").text.splitlines():
        if line.startswith("celebxai_explanation_verdicts_total{"):
            labels, value = line.removeprefix("celebxai_explanation_verdicts_total").split(" ")
            method = labels.split('method="')[1].split('"')[0]
            verdict = labels.split('verdict="')[1].split('"')[0]
            counts[(method, verdict)] = float(value)
    return counts


@pytest.fixture(scope="module")
def photo(held_out_faces: list[tuple[Path, str]]) -> bytes:
    return held_out_faces[12][0].read_bytes()


@pytest.fixture(scope="module")
def good_answer(client: TestClient, photo: bytes) -> dict:
    """Occlusion's answer for ``photo``, graded."""
    response = client.post("/explain/occlusion?quality=true", files={"file": ("photo.png", photo)})
    assert response.status_code == 200, response.text
    return response.json()


# -- in every explanation answer -------------------------------------------------------------


def test_get_explain_states_the_rule_and_each_methods_default_cost_and_signals(client) -> None:
    body = client.get("/explain").json()
    assert body["quality_rule"] == RULE
    assert "quality" in body["common_parameters"]
    for method in body["methods"]:
        explainer = EXPLAINERS[method["name"]]
        assert method["quality"]["default"] == explainer.quality_by_default
        assert method["quality"]["signals"] == list(explainer.signal_names)
        assert method["quality"]["passes"] > method["quality"]["repeat_passes"] >= 1
    defaults = {m["name"] for m in body["methods"] if m["quality"]["default"]}
    assert defaults == {"lime", "rise"}


def test_a_method_that_grades_by_default_answers_with_its_report(good_answer) -> None:
    quality = good_answer["quality"]
    assert quality["verdict"] in ("strong", "weak", "unreliable") and quality["reasons"]
    assert quality["steps"] == STEPS
    assert quality["deletion_ratio"] == pytest.approx(
        quality["deletion_auc"] / quality["random_deletion_auc"]
    )
    assert quality["probability"] == pytest.approx(good_answer["target"]["probability"])
    assert good_answer["timings"]["quality_ms"] > 0


def test_quality_true_and_false_override_the_methods_default(client, photo) -> None:
    files = {"file": ("photo.png", photo)}
    assert client.post("/explain/gradcam", files=files).json()["quality"] is None
    graded = client.post("/explain/gradcam?quality=true", files=files).json()
    assert graded["quality"]["verdict"] in ("strong", "weak", "unreliable")
    assert client.post("/explain/lime?quality=false", files=files).json()["quality"] is None
    alias = client.post("/saliency?method=gradcam&quality=true", files=files).json()
    assert alias["quality"] == graded["quality"]  # one code path, one cached report


def test_a_png_answer_carries_its_verdict_in_a_header(client, photo, good_answer) -> None:
    files = {"file": ("photo.png", photo)}
    overlay = client.post("/explain/occlusion?format=overlay&quality=true", files=files)
    assert overlay.headers["x-quality-verdict"] == good_answer["quality"]["verdict"]
    plain = client.post("/explain/gradcam?format=png&quality=false", files=files)
    assert "x-quality-verdict" not in plain.headers


def test_verdicts_are_counted_per_method_in_metrics(client, photo) -> None:
    before = verdicts(client)
    answer = client.post("/explain/rise?num_masks=64", files={"file": ("photo.png", photo)}).json()
    after = verdicts(client)
    key = ("rise", answer["quality"]["verdict"])
    assert after[key] == before.get(key, 0) + 1


def test_a_job_carries_the_report_in_its_result_and_its_final_event(client, photo) -> None:
    started = client.post("/jobs/lime?num_samples=64&seed=5", files={"file": ("photo.png", photo)})
    assert started.status_code == 202, started.text
    job_id = started.json()["id"]
    done = wait_for(client, job_id, {"done", "failed"})
    assert done["state"] == "done", done
    result = done["result"]
    assert result["quality"]["verdict"] in ("strong", "weak", "unreliable")
    events = []
    with client.stream("GET", f"/jobs/{job_id}/events") as stream:
        for line in stream.iter_lines():
            if line.startswith("data:"):
                events.append(json.loads(line.removeprefix("data:")))
    assert events[-1]["state"] == "done"
    assert events[-1]["quality"] == result["quality"]
    synchronous = client.post(
        "/explain/lime?num_samples=64&seed=5", files={"file": ("photo.png", photo)}
    ).json()
    assert synchronous["quality"] == result["quality"]


def test_a_black_images_map_is_unreliable(client) -> None:
    black = png_bytes(Image.new("RGB", (200, 200)))
    answer = client.post(
        "/explain/occlusion?detect=false&quality=true", files={"file": ("black.png", black)}
    ).json()
    assert answer["quality"]["verdict"] == "unreliable"
    graded = evaluate(client, black, grid_json(answer["heatmap"]["values"]), detect="false")
    assert graded.status_code == 200, graded.text
    assert graded.json()["quality"]["verdict"] == "unreliable"


# -- POST /explain/evaluate ------------------------------------------------------------------


def test_a_good_map_is_strong_and_inverted_or_shuffled_it_is_unreliable(
    client, photo, good_answer
) -> None:
    values = np.array(good_answer["heatmap"]["values"])
    assert good_answer["quality"]["verdict"] == "strong"

    as_sent = evaluate(client, photo, json.dumps(good_answer["heatmap"]).encode()).json()
    inverted = evaluate(client, photo, grid_json(-values)).json()
    # shuffled pixel by pixel where the model sees it (a shuffle on the upload's grid would be
    # smoothed into blobs on its way onto the face)
    on_input = np.asarray(Image.fromarray(values.astype(np.float32), mode="F").resize((150, 150)))
    shuffled_values = np.random.default_rng(1).permutation(on_input.ravel()).reshape(150, 150)
    shuffled = evaluate(client, photo, grid_json(shuffled_values)).json()

    assert as_sent["quality"]["verdict"] == "strong", as_sent["quality"]
    assert as_sent["map"] == {
        "width": values.shape[1],
        "height": values.shape[0],
        "space": "upload",
    }
    assert inverted["quality"]["verdict"] == "unreliable", inverted["quality"]
    assert shuffled["quality"]["verdict"] == "unreliable", shuffled["quality"]
    # the map laid back on the face is the service's own, up to the resampling both ways
    assert as_sent["quality"]["deletion_auc"] == pytest.approx(
        good_answer["quality"]["deletion_auc"], abs=0.03
    )


def test_a_map_at_the_model_inputs_size_and_as_a_greyscale_png_grade_alike(client, photo) -> None:
    side = 150
    rows, cols = np.mgrid[0:side, 0:side]
    bump = np.exp(-(((rows - 80) / 30.0) ** 2 + ((cols - 75) / 25.0) ** 2))
    as_json = evaluate(client, photo, grid_json(bump)).json()
    grey = Image.fromarray(np.round(bump * 255).astype(np.uint8), mode="L")
    as_png = evaluate(client, photo, png_bytes(grey), name="map.png").json()
    assert as_json["map"]["space"] == as_png["map"]["space"] == "model_input"
    assert as_png["quality"]["deletion_auc"] == pytest.approx(
        as_json["quality"]["deletion_auc"], abs=0.02
    )
    assert as_png["quality"]["random_deletion_auc"] == as_json["quality"]["random_deletion_auc"]


def test_the_deletion_auc_is_what_predict_says_of_the_deleted_photos(
    client, held_out_faces, default_bundle
) -> None:
    """An independent recomputation: the test deletes the pixels itself, on uploads, in the
    order of its own map, and reads the target's probability from /predict."""
    side, size = 150, 900
    photo = Image.open(held_out_faces[3][0]).convert("RGB").resize((size, size))
    upload = png_bytes(photo)
    rows, cols = np.mgrid[0:side, 0:side]
    order_map = np.exp(-(((rows - 70) / 35.0) ** 2 + ((cols - 75) / 30.0) ** 2))
    order_map += rows * 1e-7 + cols * 1e-9  # no ties: one order, whoever sorts it

    report = evaluate(client, upload, grid_json(order_map), detect="false").json()
    target = report["target"]["id"]

    meta = json.loads((default_bundle / "meta.json").read_text())
    left, top, right, bottom = meta["input"]["framing"]
    mean = np.round(meta["input"]["mean"]).astype(np.uint8)  # model input 0
    # each upload pixel's model-input pixel: box -> 150 x 150, pixel centres
    centres = np.arange(size) + 0.5
    u = np.floor((centres - left * size) / ((right - left) * size) * side).astype(int)
    v = np.floor((centres - top * size) / ((bottom - top) * size) * side).astype(int)
    inside_u, inside_v = (u >= 0) & (u < side), (v >= 0) & (v < side)
    ranks = np.empty(side * side, dtype=int)
    ranks[np.argsort(-order_map.ravel(), kind="stable")] = np.arange(side * side)
    ranks = ranks.reshape(side, side)
    counts = np.round(np.linspace(0, side * side, STEPS + 1)).astype(int)

    pixels = np.asarray(photo)
    curve = []
    for count in counts:
        deleted = ranks < count
        mask = np.zeros((size, size), dtype=bool)
        vv, uu = np.ix_(np.flatnonzero(inside_v), np.flatnonzero(inside_u))
        mask[vv, uu] = deleted[v[vv], u[uu]]
        shown = np.where(mask[..., None], mean, pixels).astype(np.uint8)
        answer = client.post(
            "/predict?detect=false", files={"file": ("d.png", png_bytes(Image.fromarray(shown)))}
        ).json()
        curve.append(next(c["probability"] for c in answer["probabilities"] if c["id"] == target))
    assert curve[0] - curve[-1] > 0.3  # a curve that falls: there is an area to check
    assert curve[0] == pytest.approx(report["quality"]["probability"], abs=1e-3)
    assert area_under(np.array(curve)) == pytest.approx(report["quality"]["deletion_auc"], abs=0.01)


def test_the_target_defaults_to_the_prediction_and_can_be_named(client, photo, good_answer) -> None:
    values = grid_json(np.array(good_answer["heatmap"]["values"]))
    default = evaluate(client, photo, values).json()
    assert default["target"]["id"] == default["label"] == good_answer["label"]
    other = next(c["id"] for c in good_answer["probabilities"][1:])
    named = evaluate(client, photo, values, target=other).json()
    assert named["target"]["id"] == other
    assert named["quality"]["probability"] < default["quality"]["probability"]


def test_the_same_map_gets_the_same_report_when_asked_at_once(client, photo, good_answer) -> None:
    from concurrent.futures import ThreadPoolExecutor

    values = grid_json(np.array(good_answer["heatmap"]["values"]) * 0.5)
    with ThreadPoolExecutor(4) as pool:
        answers = list(pool.map(lambda _: evaluate(client, photo, values).json(), range(4)))
    assert all(a["quality"] == answers[0]["quality"] for a in answers)


# -- bad input -------------------------------------------------------------------------------

BAD_MAPS = {
    "empty": (b"", "map.json", 422, "bad_map", "empty"),
    "not json": (b"\x00\x01garbage", "map.bin", 422, "bad_map", "neither a PNG nor JSON"),
    "a number": (b"3", "map.json", 422, "bad_map", "list of rows"),
    "ragged": (b"[[1,2],[3]]", "map.json", 422, "bad_map", "differ in length"),
    "strings": (b'[["a","b"],["c","d"]]', "map.json", 422, "bad_map", "other than numbers"),
    "booleans": (b"[[true,false],[false,true]]", "map.json", 422, "bad_map", "other than num"),
    "nan": (b"[[NaN,1],[1,1]]", "map.json", 422, "bad_map", "NaN"),
    "infinity": (b"[[Infinity,1],[1,1]]", "map.json", 422, "bad_map", "Infinity"),
    "too deep": (b"[[[1]]]", "map.json", 422, "bad_map", "other than numbers"),
    "object without values": (b'{"width": 2}', "map.json", 422, "bad_map", "'values'"),
    "empty rows": (b"[[]]", "map.json", 422, "bad_map", "2-D grid"),
    "wrong size": (grid_json(np.ones((7, 9))), "map.json", 422, "bad_map", "150x150"),
    "colour png": (png_bytes(Image.new("RGB", (150, 150))), "m.png", 422, "bad_map", "greyscale"),
    "corrupt png": (b"\x89PNG\r\n\x1a\n" + b"\x00" * 40, "m.png", 422, "bad_map", "cannot be read"),
    "huge png": (png_bytes(Image.new("L", (4000, 4000))), "m.png", 413, "too_many_pixels", "4000"),
    "beyond float64": (b"[[1" + b"0" * 400 + b"]]", "map.json", 422, "bad_map", "too large"),
    "5000 digits": (b"[[" + b"1" * 5000 + b"]]", "map.json", 422, "bad_map", "too long"),
    "nested too deeply": (b"[" * 100_000 + b"]" * 100_000, "m.json", 422, "bad_map", "deeply"),
    "beyond float32": (grid_json(np.full((150, 150), 1e308)), "m.json", 422, "bad_map", "beyond"),
    "png magic only": (b"\x89PNG\r\n\x1a\n", "m.png", 422, "bad_map", "cannot identify"),
    # beyond Pillow's own bound, its open() refuses it before the service's check can
    "bomb png": (png_claiming(20000, 20000), "m.png", 413, "too_many_pixels", "4194304"),
}


@pytest.mark.parametrize("case", list(BAD_MAPS))
def test_a_bad_map_is_a_clear_error_and_the_service_keeps_serving(
    client, photo, face_bytes, case: str
) -> None:
    data, name, status, code, words = BAD_MAPS[case]
    response = evaluate(client, photo, data, name=name)
    assert response.status_code == status, response.text
    error = response.json()["error"]
    assert error["code"] == code and words in error["message"], error
    assert " at 0x" not in error["message"]  # no object's repr
    assert client.post("/predict", files={"file": ("f.png", face_bytes)}).status_code == 200


def test_a_map_larger_than_its_byte_limit_is_refused(client, photo) -> None:
    from service.intake.maps import MAX_MAP_BYTES

    response = evaluate(client, photo, b"[" * (MAX_MAP_BYTES + 1))
    assert response.status_code == 413 and response.json()["error"]["code"] == "file_too_large"


def test_a_missing_map_an_unknown_target_and_a_faceless_photo_are_clear_errors(
    client, photo, good_answer
) -> None:
    missing = client.post("/explain/evaluate", files={"file": ("photo.png", photo)})
    assert missing.status_code == 422 and "map" in missing.text
    values = grid_json(np.array(good_answer["heatmap"]["values"]))
    unknown = evaluate(client, photo, values, target="nobody")
    assert unknown.status_code == 422 and unknown.json()["error"]["code"] == "unknown_class"
    blank = png_bytes(Image.new("RGB", (300, 300), (200, 200, 200)))
    faceless = evaluate(client, blank, values)
    assert faceless.status_code == 422 and faceless.json()["error"]["code"] == "no_face"


def test_answers_and_the_method_list_carry_the_bundles_sanity_result(
    client, photo, default_bundle
) -> None:
    meta = json.loads((default_bundle / "meta.json").read_text())
    measured = meta["sanity"]["methods"]
    listed = {m["name"]: m["sanity"] for m in client.get("/explain").json()["methods"]}
    # the one-pass method's is its explainer's own cascade, from the command that fitted it
    one_pass = {"fastshap": meta["one_pass"]["gates"]["randomisation"]["passed"]}
    assert {name: note["passed"] for name, note in listed.items()} == {
        **{name: result["passed"] for name, result in measured.items()},
        **one_pass,
    }
    failing = next(name for name, result in measured.items() if not result["passed"])
    passing = next(name for name, result in measured.items() if result["passed"])
    for name in (failing, passing):
        answer = client.post(f"/explain/{name}", files={"file": ("photo.png", photo)}).json()
        assert answer["sanity"] == listed[name]
    assert listed[failing]["note"].startswith("fails the sanity check")
    assert listed[passing]["note"].startswith("passes the sanity check")


def test_grading_keeps_its_results_apart_from_the_heatmaps(cold_client, photo) -> None:
    """A graded map adds its report and the face's random curves to the grades cache, not to
    the heatmaps' (whose 64 entries hold the page's maps of several faces)."""

    def entries() -> dict[str, float]:
        found = {}
        for line in cold_client.get("/metrics").text.splitlines():
            if line.startswith("celebxai_cache_entries{"):
                found[line.split('cache="')[1].split('"')[0]] = float(line.split()[-1])
        return found

    before = entries()
    files = {"file": ("photo.png", photo)}
    cold_client.post("/explain/gradcam?quality=true&layer=layer4", files=files)
    after = entries()
    assert after["explanations"] - before["explanations"] == 1  # the heatmap
    assert 1 <= after["grades"] - before["grades"] <= 2  # its report (and the random curves)
