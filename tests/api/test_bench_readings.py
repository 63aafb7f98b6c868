"""What bench/bench_speed.py reads from a service's answers: a face resized to the model input
and sent whole (``detect=false``) comes back as the map the method computes on that model input,
with the same deletion AUC; ``GET /model`` says which precision serves and what the INT8 gates
recorded."""

from __future__ import annotations

import json

import numpy as np

from bench._client import (
    grid_values,
    model_sized_png,
    on_model_input,
    precision_of,
    rank_correlation,
    whole_upload_input,
)
from service.explain import EXPLAINERS, ModelHandle
from service.explain.faithfulness import deletion_auc

# cheap: 25 forward passes; bench_speed asks for 24/12, the same code path
WINDOW, STRIDE = 50, 25


def test_a_whole_upload_grid_is_the_model_input_map(client, serving_model, held_out_faces):
    path, _ = held_out_faces[0]
    upload = model_sized_png(path, serving_model.preprocess.size)
    answer = client.post(
        "/explain/occlusion",
        params={"detect": "false", "window": WINDOW, "stride": STRIDE},
        files={"file": ("face.png", upload, "image/png")},
    )
    assert answer.status_code == 200, answer.text
    body = answer.json()
    x = whole_upload_input(upload, serving_model.preprocess)
    handle = ModelHandle(
        serving_model.engine.run, serving_model.twin, serving_model.meta.gradcam_layer
    )
    target = [c.id for c in serving_model.meta.classes].index(body["target"]["id"])
    direct = EXPLAINERS["occlusion"](handle).attribute(x, target, window=WINDOW, stride=STRIDE)
    framing = serving_model.meta.input.framing

    mapped = on_model_input(grid_values(body), (x.shape[2], x.shape[1]), framing)

    assert body["face_box"]["source"] == "whole_image"
    assert mapped.shape == direct.values.shape
    if framing is None:
        np.testing.assert_allclose(mapped, direct.values, atol=1e-4)  # JSON: 4 decimals
    else:  # laid back onto the upload through the framing box, then cut out of it again
        assert rank_correlation(mapped, direct.values) > 0.95
        # equal but where interpolation blurs the occlusion map's block edges
        error = np.abs(mapped - direct.values) / np.abs(direct.values).max()
        assert np.median(error) < 0.01 and error.mean() < 0.03, (np.median(error), error.mean())
    aucs = [deletion_auc(handle.forward, x, m, target) for m in (mapped, direct.values)]
    assert abs(aucs[0] - aucs[1]) <= 0.005, aucs


def test_the_precision_and_int8_gates_are_read_from_get_model(
    client, default_bundle, serving_model
):
    recorded = json.loads((default_bundle / "meta.json").read_text()).get("precision", {})
    gates_recorded = recorded.get("int8", {}).get("gates")

    precision, gates = precision_of(client.get("/model").json())

    assert precision == serving_model.report.precision  # the graph that serves, not the setting
    if gates_recorded is None:
        assert gates is None
    else:
        assert gates is not None
        for key in ("accuracy_drop_points", "label_agreement", "auroc_drop", "passed"):
            assert gates[key] == gates_recorded[key], key
