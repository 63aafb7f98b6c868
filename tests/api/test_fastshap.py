"""The one-pass method (``fastshap``) over HTTP on the committed bundle, which ships its explainer
(``one_pass.onnx``), and on a copy of the bundle without one: listed there as unavailable, and
every way of asking for it refused with 422 ``method_unavailable`` before any work."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from fastapi.testclient import TestClient
from httpx import Response

from service.app import create_app
from service.bundle.format import ONE_PASS_FILE
from tests.api.conftest import API_KEY
from tests.api.job_polling import batches, metric


def send(client: TestClient, path: str, photo: bytes, **params: Any) -> Response:
    return client.post(path, params=params, files={"file": ("face.png", photo, "image/png")})


@pytest.fixture(scope="module")
def face(held_out_faces: list[tuple[Path, str]]) -> bytes:
    return held_out_faces[6][0].read_bytes()


def listed(client: TestClient) -> dict[str, Any]:
    methods = client.get("/explain").json()["methods"]
    return next(method for method in methods if method["name"] == "fastshap")


def test_the_committed_bundle_runs_the_one_pass_method(client, serving_model):
    assert serving_model.one_pass is not None, "the committed bundle ships one_pass.onnx"
    method = listed(client)

    assert method["available"] is True and method["unavailable"] is None
    assert method["signed"] is True and method["needs_twin"] is False
    assert method["explains"] == ["class", "contrast"]  # not the open-set score
    assert method["parameters"].get("properties", {}) == {}
    # its sanity badge: the explainer's own randomisation cascade, refitted at every stage
    stages = serving_model.meta.one_pass.gates["randomisation"]["stages"]
    assert method["sanity"]["passed"] is True
    assert f"{max(s['spearman'] for s in stages):.2f}" in method["sanity"]["note"]


def test_its_map_is_signed_and_its_cells_add_up_to_the_logit_gain(client, face, serving_model):
    answer = send(client, "/explain/fastshap", face, detect="false", quality="true")
    assert answer.status_code == 200, answer.text
    body = answer.json()

    assert body["method"] == "fastshap"
    assert body["heatmap"]["signed"] is True
    values = np.asarray(body["heatmap"]["values"], dtype=np.float64)
    assert values.min() < 0 < values.max()  # cells for and against the class
    assert body["samples"] is None  # no sampling
    assert body["quality"]["verdict"] in {"strong", "weak", "unreliable"}
    # the predicted class's explanation, like every method's default
    assert body["target"]["id"] == body["label"]


def batcher_batches(client: TestClient) -> float:
    """The batches the dynamic batcher has run (``celebxai_batch_size_count``)."""
    return metric(client, "celebxai_batch_size_count")


def test_one_run_of_the_served_graph_gives_the_prediction_and_the_map(
    client, serving_model, held_out_faces
):
    """Grafted onto the graph that serves, the explainer needs no prediction of the batcher: a
    photo's map runs one pass and no batch there, and its prediction is the served graph's."""
    runtime = client.get("/model").json()["runtime"]
    assert runtime["one_pass"].startswith(f"grafted onto {runtime['onnx_file']}")
    assert serving_model.one_pass.predict is not None
    photo = held_out_faces[11][0].read_bytes()

    before, passes = batcher_batches(client), batches(client)
    answer = send(client, "/explain/fastshap", photo, detect="false")
    assert answer.status_code == 200, answer.text
    assert answer.json()["cached"] is False
    assert (batcher_batches(client), batches(client)) == (before, passes + 1)
    predicted = send(client, "/predict", photo, detect="false").json()
    assert batcher_batches(client) == before + 1
    assert answer.json()["label"] == predicted["label"]
    mine = {c["id"]: c["probability"] for c in answer.json()["probabilities"]}
    theirs = {c["id"]: c["probability"] for c in predicted["probabilities"]}
    assert mine.keys() == theirs.keys()
    assert all(abs(mine[key] - theirs[key]) < 1e-4 for key in mine)


def test_a_contrast_and_the_open_set_score(client, face):
    ranked = send(client, "/predict", face, detect="false").json()["probabilities"]
    first, second = ranked[0]["id"], ranked[1]["id"]
    contrast = send(client, "/explain/fastshap", face, detect="false", contrast=second)
    assert contrast.status_code == 200, contrast.text
    assert contrast.json()["explains"]["kind"] == "contrast"
    assert contrast.json()["target"]["id"] == first

    for path in ("/explain/fastshap", "/jobs/fastshap"):  # a job is refused before its 202
        before = batches(client)
        refused = send(client, path, face, detect="false", target="open_set")
        assert refused.status_code == 422, (path, refused.text)
        assert refused.json()["error"]["code"] == "open_set_unavailable"
        assert "fastshap explains class logits" in refused.json()["error"]["message"]
        assert batches(client) == before  # refused before any pass


def test_it_answers_as_a_png_and_as_a_job(client, face):
    png = send(client, "/explain/fastshap", face, format="overlay")
    assert png.status_code == 200, png.text
    assert png.headers["content-type"] == "image/png"

    started = send(client, "/jobs/fastshap", face, detect="false")
    assert started.status_code == 202, started.text


# -- a bundle without the explainer -------------------------------------------------------------


@pytest.fixture(scope="module")
def without_one_pass(make_settings, default_bundle: Path, tmp_path_factory) -> Iterator[TestClient]:
    """An app on a copy of the bundle whose meta.json has no ``one_pass`` entry (nor the file)."""
    bundle = tmp_path_factory.mktemp("no-one-pass") / "bundle"
    bundle.mkdir()
    for path in default_bundle.iterdir():
        if path.name not in {"meta.json", ONE_PASS_FILE}:
            (bundle / path.name).symlink_to(path)
    meta = json.loads((default_bundle / "meta.json").read_text())
    meta.pop("one_pass", None)
    meta["files"].pop(ONE_PASS_FILE, None)
    (bundle / "meta.json").write_text(json.dumps(meta))
    with TestClient(create_app(make_settings(model=bundle)), headers={"X-API-Key": API_KEY}) as c:
        yield c


def test_without_the_explainer_it_is_listed_as_unavailable(without_one_pass):
    method = listed(without_one_pass)

    assert method["available"] is False
    assert "python -m training one-pass" in method["unavailable"]
    others = [m for m in without_one_pass.get("/explain").json()["methods"] if m is not method]
    assert all(m["available"] for m in others if m["name"] != "fastshap")


@pytest.mark.parametrize("path", ["/explain/fastshap", "/jobs/fastshap"])
def test_without_the_explainer_every_way_of_asking_is_refused_before_any_work(
    without_one_pass, face, path
):
    before = batches(without_one_pass)
    refused = send(without_one_pass, path, face, detect="false")

    assert refused.status_code == 422, refused.text
    assert refused.json()["error"]["code"] == "method_unavailable"
    assert "one-pass explainer" in refused.json()["error"]["message"]
    assert batches(without_one_pass) == before
    assert send(without_one_pass, "/predict", face).status_code == 200  # still serving
