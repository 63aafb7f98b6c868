"""What bench/bench_contrast.py measures: the faces it explains are the service's model inputs
(found and aligned as an upload's face), its scores are the ones the answers' ``explains``
report, and its areas are what the docstring says."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest
from fastapi.testclient import TestClient

from service.app import create_app
from service.bundle.preprocess import Preprocessor
from service.explain.objective import Question, resolve

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "bench"))  # as a script runs it
import bench_contrast  # noqa: E402

from .conftest import API_KEY  # noqa: E402


def test_a_curve_that_falls_sooner_has_the_smaller_area_above_the_pairs_floor() -> None:
    steps = np.linspace(0, 1, 17)
    soon = 4 - 6 * np.sqrt(steps)  # falls fast, ends at -2
    late = 4 - 6 * steps**2  # falls late, ends at -2
    ours, random = bench_contrast.areas_above(soon, late)

    floor = -2.0
    assert ours == pytest.approx(np.trapezoid(soon - floor, dx=1 / 16))
    assert random == pytest.approx(np.trapezoid(late - floor, dx=1 / 16))
    assert 0 < ours < random
    # a curve that overshoots below the other's end sets the floor for both
    below = np.r_[soon[:-1], -5.0]
    ours, random = bench_contrast.areas_above(below, late)
    assert random == pytest.approx(np.trapezoid(late + 5.0, dx=1 / 16))


@pytest.fixture(scope="module")
def fp32_client(make_settings):
    """The service on the FP32 graph, the one the bench measures (``model_handle``): where
    ``precision=auto`` serves INT8, the served scores differ from FP32's by the INT8 graph's
    tolerance, and the comparison below is of the bench's numbers with the service's."""
    app = create_app(make_settings(precision="fp32"))
    with TestClient(app, headers={"X-API-Key": API_KEY}) as client:
        yield client


@pytest.fixture(scope="module")
def handle(default_bundle: Path, serving_model):
    return bench_contrast.model_handle(default_bundle, serving_model.meta, threads=2)


@pytest.mark.parametrize("ask", [{"target": "open_set"}, {"contrast": "runner-up"}])
def test_the_bench_explains_the_service_s_face_and_score(
    fp32_client, serving_model, handle, held_out_faces, ask
) -> None:
    client = fp32_client
    path, _ = held_out_faces[5]
    upload = path.read_bytes()
    predicted = client.post("/predict", files={"file": (path.name, upload, "image/png")}).json()
    if "contrast" in ask:
        ask = {"contrast": predicted["probabilities"][1]["id"]}
    answer = client.post(
        "/explain/occlusion",
        params={**ask, "format": "json"},
        files={"file": (path.name, upload, "image/png")},
    )
    assert answer.status_code == 200, answer.text
    explains = answer.json()["explains"]

    x = bench_contrast.aligned_input(serving_model.meta, Preprocessor(serving_model.meta.input))(
        path
    )
    logits = handle.forward(x[None])[0]
    ids = [c.id for c in serving_model.meta.classes]
    question = (
        Question(open_set=True) if "target" in ask else Question(None, ids.index(ask["contrast"]))
    )
    objective = resolve(question, logits, handle.open_set)
    curve = bench_contrast.deletion_curve(objective, handle, x, np.zeros(x.shape[1:]), 4)

    assert curve[0] == pytest.approx(explains["log_odds"], abs=1e-3)  # the photo's own score
    # the served flavour (the open-set column's second figure) is the answer's value
    served = bench_contrast.deletion_curve(
        objective, handle, x, np.zeros(x.shape[1:]), 4, "probability"
    )
    assert served[0] == pytest.approx(explains["value"], abs=1e-4)
    assert served == pytest.approx(1 / (1 + np.exp(-curve)), abs=1e-6)
    assert objective.kind == explains["kind"]
