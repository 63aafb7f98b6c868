"""Contrastive and open-set maps over HTTP: ``contrast=<class id>`` (why the target and not that
class: the map of logit(target) - logit(contrast)) and ``target=open_set`` (why one of the
classes, or none: the open-set score /predict's verdict reads) on every explanation route, as
jobs and in ``POST /explain/evaluate``, with their refusals. Real photos (a test-split face, a
held-out stranger) and the committed bundle."""

from __future__ import annotations

import json
import math
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from fastapi.testclient import TestClient
from httpx import Response

from service.app import create_app
from service.explain import EXPLAINERS
from tests.api.job_polling import batches, wait_for

from .conftest import API_KEY

pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning")

# Cheap parameters per method: what a contrast or the open-set score changes, not the maps'
# fineness, is under test. A method not listed runs with its defaults.
CHEAP: dict[str, dict[str, Any]] = {
    "smoothgrad": {"samples": 4},
    "integrated_gradients": {"steps": 8},
    "occlusion": {"window": 32, "stride": 16},
    "lime": {"num_samples": 64, "num_segments": 20},
    "rise": {"num_masks": 64},
}
# Every route that explains: (path, its own query parameters).
ROUTES = [
    *((f"/explain/{name}", CHEAP.get(name, {})) for name in EXPLAINERS),
    ("/saliency", {"method": "integrated_gradients", **CHEAP["integrated_gradients"]}),
    ("/occlusion", CHEAP["occlusion"]),
    ("/lime", CHEAP["lime"]),
]
ROUTE_IDS = [f"{path}:{params.get('method', '')}".rstrip(":") for path, params in ROUTES]
# Those whose method explains the open-set score (fastshap's explainer learned class logits only:
# tests/api/test_fastshap.py checks its refusal).
OPEN_SET_ROUTES = [
    (path, params)
    for path, params in ROUTES
    if not path.startswith("/explain/") or EXPLAINERS[path.rsplit("/", 1)[1]].explains_open_set
]
OPEN_SET_IDS = [
    f"{path}:{params.get('method', '')}".rstrip(":") for path, params in OPEN_SET_ROUTES
]
# Occlusion of the logit-flavour score: signed, and linear in the score, so the map of a logit
# gap is the difference of the two classes' maps.
SIGNED = {"window": 32, "stride": 16, "score": "logit", "strategy": "exhaustive"}
STRANGER = "victoria_beckham"  # held out of the bundle's calibration (meta.json)


def values(answer: dict[str, Any]) -> np.ndarray:
    return np.asarray(answer["heatmap"]["values"], dtype=np.float64)


def raw(answer: dict[str, Any]) -> np.ndarray:
    """The map in its units (the JSON grid is scaled to its largest magnitude)."""
    return values(answer) * answer["heatmap"]["scale"]


def correlation(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.corrcoef(a.ravel(), b.ravel())[0, 1])


def probability_of(answer: dict[str, Any], class_id: str) -> float:
    return next(p["probability"] for p in answer["probabilities"] if p["id"] == class_id)


@pytest.fixture(scope="module")
def ask(client: TestClient) -> Callable[..., Response]:
    """``ask(path, photo, **params)``: POST ``photo`` as ``file`` with query ``params``."""

    def post(path: str, photo: bytes, **params: Any) -> Response:
        return client.post(path, params=params, files={"file": ("face.png", photo, "image/png")})

    return post


@pytest.fixture(scope="module")
def face(held_out_faces: list[tuple[Path, str]]) -> bytes:
    """A test-split face (split.json's test list)."""
    return held_out_faces[4][0].read_bytes()


@pytest.fixture(scope="module")
def stranger(data_root: Path, serving_model: Any) -> bytes:
    """A held-out stranger's photo (meta.json open_set.held_out.unknown_identities)."""
    held_out = serving_model.meta.open_set.model_dump()["held_out"]["unknown_identities"]
    assert STRANGER in held_out
    return sorted((data_root / "others" / STRANGER).glob("*.png"))[0].read_bytes()


@pytest.fixture(scope="module")
def ranking(client: TestClient, face: bytes) -> list[str]:
    """The face's classes, most probable first (/predict)."""
    answer = client.post("/predict", files={"file": ("face.png", face, "image/png")}).json()
    return [p["id"] for p in answer["probabilities"]]


def check_contrast(answer: dict[str, Any], target: str, contrast: str) -> None:
    """``answer`` explains ``target`` against ``contrast``, its numbers those of its
    probabilities: the logit gap log(p_t / p_c) and p_t / (p_t + p_c)."""
    explains = answer["explains"]
    p_t, p_c = probability_of(answer, target), probability_of(answer, contrast)
    assert answer["target"]["id"] == target
    assert explains["kind"] == "contrast"
    assert explains["contrast"]["id"] == contrast
    assert explains["contrast"]["probability"] == pytest.approx(p_c, rel=1e-6, abs=1e-9)
    assert explains["log_odds"] == pytest.approx(math.log(p_t / p_c), rel=1e-4, abs=1e-4)
    assert explains["value"] == pytest.approx(p_t / (p_t + p_c), rel=1e-5, abs=1e-7)
    assert target in explains["score"] and contrast in explains["score"]
    assert explains["known"] is None and explains["threshold"] is None


# -- contrast= -------------------------------------------------------------------------------


@pytest.mark.parametrize(("path", "params"), ROUTES, ids=ROUTE_IDS)
def test_a_contrast_explains_the_logit_gap_on_every_route(ask, face, ranking, path, params):
    # the predicted class against the runner-up (a close call), then a named target against a
    # class far below it
    runner_up = ask(path, face, contrast=ranking[1], **params)
    named = ask(path, face, target=ranking[2], contrast=ranking[-1], **params)

    assert runner_up.status_code == 200, runner_up.text
    assert named.status_code == 200, named.text
    check_contrast(runner_up.json(), ranking[0], ranking[1])
    check_contrast(named.json(), ranking[2], ranking[-1])
    assert named.json()["explains"]["log_odds"] > 0  # the last class is below any other


def test_a_contrast_map_is_neither_classs_plain_map_and_flips_with_the_question(ask, face, ranking):
    top, second = ranking[0], ranking[1]
    plain_top = raw(ask("/explain/occlusion", face, target=top, **SIGNED).json())
    plain_second = raw(ask("/explain/occlusion", face, target=second, **SIGNED).json())
    top_not_second = raw(ask("/explain/occlusion", face, contrast=second, **SIGNED).json())
    second_not_top = ask("/explain/occlusion", face, target=second, contrast=top, **SIGNED).json()

    assert second_not_top["explains"]["log_odds"] < 0  # the second is less likely
    for plain in (plain_top, plain_second):
        assert correlation(top_not_second, plain) < 0.99
    # P vs Q is the negative of Q vs P, up to the maps' scaling
    assert correlation(top_not_second, raw(second_not_top)) < -0.99
    # and, in logit units, the difference of the plain maps (occlusion is linear in the score)
    assert correlation(top_not_second, plain_top - plain_second) > 0.99
    difference = np.abs(top_not_second - (plain_top - plain_second)).max()
    assert difference < 0.01 * np.abs(top_not_second).max()


@pytest.mark.parametrize("method", list(EXPLAINERS))
def test_every_methods_contrast_is_its_own_map_and_its_reverse_the_negative_if_signed(
    ask, face, ranking, method
):
    params = CHEAP.get(method, {})
    top, second = (
        values(ask(f"/explain/{method}", face, target=t, **params).json()) for t in ranking[:2]
    )
    answer = ask(f"/explain/{method}", face, contrast=ranking[1], **params).json()
    against = values(answer)
    reverse = values(
        ask(f"/explain/{method}", face, target=ranking[1], contrast=ranking[0], **params).json()
    )

    for plain in (top, second):
        assert correlation(against, plain) < 0.99
    if answer["heatmap"]["signed"]:
        # the score is the logit gap, Q vs P = -(P vs Q): -1 but for occlusion's
        # coarse_to_fine, whose refined windows follow each map's own peaks (-0.95 here)
        assert correlation(against, reverse) < -0.9
    else:
        assert np.abs(against - reverse).max() > 0.1


def test_a_cached_contrast_is_not_the_plain_answer(ask, face, ranking):
    # parameters no other test asks, so the first answer is computed here
    params = {"window": 44, "stride": 22, "baseline": "mean"}
    plain = ask("/explain/occlusion", face, **params).json()
    contrast = ask("/explain/occlusion", face, contrast=ranking[1], **params).json()
    plain_again = ask("/explain/occlusion", face, **params).json()
    contrast_again = ask("/explain/occlusion", face, contrast=ranking[1], **params).json()

    assert [plain["cached"], contrast["cached"]] == [False, False]
    assert [plain_again["cached"], contrast_again["cached"]] == [True, True]
    assert plain_again["explains"]["kind"] == "class"
    assert contrast_again["explains"]["kind"] == "contrast"
    assert plain_again["heatmap"]["values"] == plain["heatmap"]["values"]
    assert contrast_again["heatmap"]["values"] == contrast["heatmap"]["values"]
    assert not np.allclose(values(plain), values(contrast))


# -- target=open_set -------------------------------------------------------------------------


@pytest.mark.parametrize("who", ["face", "stranger"])
@pytest.mark.parametrize(("path", "params"), OPEN_SET_ROUTES, ids=OPEN_SET_IDS)
def test_open_set_maps_explain_the_score_predict_reads(request, ask, client, path, params, who):
    photo = request.getfixturevalue(who)
    verdict = client.post("/predict", files={"file": ("f.png", photo, "image/png")}).json()
    answer = ask(path, photo, target="open_set", **params)

    assert answer.status_code == 200, answer.text
    body = answer.json()
    explains = body["explains"]
    assert explains["kind"] == "open_set" and explains["contrast"] is None
    assert explains["value"] == pytest.approx(verdict["open_set"]["score"], abs=1e-5)
    assert explains["log_odds"] == pytest.approx(
        math.log(explains["value"] / (1 - explains["value"])), abs=1e-4
    )
    assert explains["known"] == verdict["open_set"]["known"]
    assert explains["threshold"] == verdict["open_set"]["threshold"]
    assert body["target"]["id"] == verdict["label"]  # the class the verdict is about
    assert np.isfinite(values(body)).all() and np.abs(values(body)).max() > 0


@pytest.mark.parametrize("method", ["occlusion", "gradient"])
def test_a_stranger_is_called_unknown_and_its_open_set_map_is_not_its_classs(ask, stranger, method):
    params = CHEAP.get(method, {})
    open_set = ask(f"/explain/{method}", stranger, target="open_set", **params).json()
    predicted = ask(f"/explain/{method}", stranger, **params).json()

    assert open_set["explains"]["known"] is False
    assert open_set["explains"]["value"] < open_set["explains"]["threshold"]
    assert open_set["target"]["id"] == predicted["target"]["id"]
    assert predicted["explains"]["kind"] == "class"
    assert correlation(values(open_set), values(predicted)) < 0.99


@pytest.mark.parametrize("method", ["occlusion", "gradcam"])
@pytest.mark.parametrize("question", ["contrast", "open_set"])
def test_quality_grades_the_score_the_map_explains(ask, face, ranking, question, method):
    query = {"contrast": ranking[1]} if question == "contrast" else {"target": "open_set"}
    params = CHEAP.get(method, {})
    answer = ask(f"/explain/{method}", face, quality="true", **params, **query)

    assert answer.status_code == 200, answer.text
    body = answer.json()
    assert body["quality"]["probability"] == pytest.approx(body["explains"]["value"], abs=1e-6)
    assert body["quality"]["verdict"] in {"strong", "weak", "unreliable"}


# -- jobs and POST /explain/evaluate ---------------------------------------------------------


@pytest.mark.parametrize("question", ["contrast", "open_set"])
def test_a_job_answers_a_contrast_and_the_open_set_score_as_the_sync_call(
    client, ask, face, ranking, question
):
    query = {"contrast": ranking[1]} if question == "contrast" else {"target": "open_set"}
    params = {**CHEAP["occlusion"], "baseline": "blur", **query}
    started = client.post(
        "/jobs/occlusion", params=params, files={"file": ("face.png", face, "image/png")}
    )
    assert started.status_code == 202, started.text
    done = wait_for(client, started.json()["id"], {"done", "failed", "cancelled"})
    assert done["state"] == "done", done
    result = client.get(f"/jobs/{started.json()['id']}/result").json()
    sync = ask("/explain/occlusion", face, **params).json()

    assert sync["cached"] is True  # the job's map, kept under the same key
    assert result["explains"] == sync["explains"]
    assert result["heatmap"] == sync["heatmap"]
    assert result["explains"]["kind"] == question


def evaluate(client: TestClient, photo: bytes, heatmap: dict[str, Any], **params: Any) -> Response:
    return client.post(
        "/explain/evaluate",
        params=params,
        files={"file": ("photo.png", photo), "map": ("map.json", json.dumps(heatmap).encode())},
    )


@pytest.mark.parametrize("question", ["contrast", "open_set"])
def test_evaluate_grades_a_sent_map_as_the_answer_graded_it(client, ask, face, ranking, question):
    query = {"contrast": ranking[1]} if question == "contrast" else {"target": "open_set"}
    answer = ask("/explain/occlusion", face, quality="true", **CHEAP["occlusion"], **query).json()
    graded = evaluate(client, face, answer["heatmap"], **query)

    assert graded.status_code == 200, graded.text
    body = graded.json()
    assert body["explains"] == answer["explains"]
    assert body["target"]["id"] == answer["target"]["id"]
    mine, theirs = body["quality"], answer["quality"]
    # the same score and the same random map: equal to the bit
    for same in ("probability", "random_deletion_auc", "random_insertion_auc", "steps"):
        assert mine[same] == pytest.approx(theirs[same], abs=1e-9), same
    # the map laid back on the face is the answer's own up to the resampling both ways (the
    # 112 px upload's grid to the 150 px model input): within 0.05 of each area (0.031 the
    # largest seen), the same verdict
    for area in ("deletion_auc", "insertion_auc", "gain"):
        assert mine[area] == pytest.approx(theirs[area], abs=0.05), area
    assert mine["verdict"] == theirs["verdict"]


# -- refusals --------------------------------------------------------------------------------

# Every route that takes contrast=: (path, its own query parameters).
REFUSING = [
    ("/explain/occlusion", CHEAP["occlusion"]),
    ("/explain/gradient", {}),
    ("/saliency", {"method": "gradcam"}),
    ("/occlusion", CHEAP["occlusion"]),
    ("/lime", CHEAP["lime"]),
    ("/jobs/occlusion", CHEAP["occlusion"]),
    ("/explain/evaluate", {}),
]
FLAT_MAP = json.dumps([[1.0] * 150] * 150).encode()


def send(client: TestClient, path: str, photo: bytes, params: dict[str, Any]) -> Response:
    files: dict[str, Any] = {"file": ("face.png", photo, "image/png")}
    if path == "/explain/evaluate":
        files["map"] = ("map.json", FLAT_MAP)
    return client.post(path, params=params, files=files)


@pytest.mark.parametrize(("path", "params"), REFUSING, ids=[p for p, _ in REFUSING])
@pytest.mark.parametrize(
    ("mistake", "words"),
    [
        ({"contrast": "nobody"}, "nobody"),
        ({"target": "{second}", "contrast": "{second}"}, "is the target itself"),
        ({"target": "open_set", "contrast": "{second}"}, "no contrast"),
    ],
    ids=["unknown", "the_target", "with_open_set"],
)
def test_a_bad_contrast_is_refused_before_any_work(
    client, face, ranking, path, params, mistake, words
):
    query = {k: v.format(second=ranking[1]) for k, v in mistake.items()}
    before = batches(client)
    refused = send(client, path, face, {**params, **query})

    assert refused.status_code == 422, refused.text
    assert refused.json()["error"]["code"] == "unknown_class"
    assert words in refused.json()["error"]["message"]
    assert batches(client) == before  # nothing computed, no job made
    served = send(client, path, face, {**params, "contrast": ranking[1]})
    assert served.status_code in (200, 202), served.text


@pytest.mark.parametrize(
    ("path", "params"),
    [r for r in REFUSING if r[0] != "/jobs/occlusion"],
    ids=[p for p, _ in REFUSING if p != "/jobs/occlusion"],
)
def test_a_contrast_equal_to_the_predicted_class_is_refused(client, face, ranking, path, params):
    refused = send(client, path, face, {**params, "contrast": ranking[0]})

    assert refused.status_code == 422, refused.text
    assert refused.json()["error"]["code"] == "unknown_class"
    assert "is the target itself" in refused.json()["error"]["message"]
    assert send(client, path, face, {**params, "contrast": ranking[1]}).status_code == 200


def test_a_job_whose_contrast_is_the_predicted_class_fails_with_the_reason(client, face, ranking):
    # the predicted class is known only once the job's prediction ran: the job is made, and
    # ends failed with the same error the synchronous call gives
    started = send(client, "/jobs/occlusion", face, {**CHEAP["occlusion"], "contrast": ranking[0]})
    assert started.status_code == 202, started.text
    ended = wait_for(client, started.json()["id"], {"done", "failed", "cancelled"})

    assert ended["state"] == "failed", ended
    assert ended["error"]["code"] == "unknown_class"
    assert "is the target itself" in ended["error"]["message"]


# -- a model without an open-set score -------------------------------------------------------


@pytest.fixture(scope="module")
def without_open_set(make_settings, default_bundle: Path, tmp_path_factory) -> Iterator[TestClient]:
    """An app on a copy of the bundle whose meta.json has no ``open_set`` block."""
    bundle = tmp_path_factory.mktemp("no-open-set") / "bundle"
    bundle.mkdir()
    for path in default_bundle.iterdir():
        if path.name != "meta.json":
            (bundle / path.name).symlink_to(path)
    meta = json.loads((default_bundle / "meta.json").read_text())
    del meta["open_set"]
    (bundle / "meta.json").write_text(json.dumps(meta))
    with TestClient(create_app(make_settings(model=bundle)), headers={"X-API-Key": API_KEY}) as c:
        yield c


@pytest.mark.parametrize(
    ("path", "params"),
    [("/explain/occlusion", CHEAP["occlusion"]), ("/explain/gradient", {}), REFUSING[-1]],
    ids=["/explain/occlusion", "/explain/gradient", "/explain/evaluate"],
)
def test_open_set_on_a_model_without_one_is_refused(without_open_set, face, path, params):
    refused = send(without_open_set, path, face, {**params, "target": "open_set"})

    assert refused.status_code == 422, refused.text
    assert refused.json()["error"]["code"] == "open_set_unavailable"
    assert "no open-set score" in refused.json()["error"]["message"]
    assert send(without_open_set, path, face, params).status_code == 200


@pytest.mark.parametrize(
    ("path", "params"),
    [("/explain/occlusion", CHEAP["occlusion"]), ("/explain/gradient", {}), REFUSING[5]],
    ids=["/explain/occlusion", "/explain/gradient", "/jobs/occlusion"],
)
def test_open_set_on_a_model_without_one_is_refused_before_any_work(
    without_open_set, face, path, params
):
    before = batches(without_open_set)
    refused = send(without_open_set, path, face, {**params, "target": "open_set"})

    assert refused.status_code == 422, refused.text
    assert refused.json()["error"]["code"] == "open_set_unavailable"
    assert batches(without_open_set) == before
