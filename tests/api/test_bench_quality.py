"""What bench/bench_quality.py computes: a map graded in process is graded as the service grades
it (method signals and integrated gradients' completeness included), and the tables' arithmetic
(ratios, ranks, flags, the maps built to fail) is what their headings say."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest

from bench._client import model_sized_png, whole_upload_input
from service.explain import EXPLAINERS, ModelHandle

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "bench"))  # as a script runs it
import bench_quality  # noqa: E402

IG_STEPS = 8  # cheap; the bench runs the default, through the same code


def test_a_map_graded_in_process_gets_the_services_report(client, serving_model, held_out_faces):
    path, _ = held_out_faces[3]
    upload = model_sized_png(path, serving_model.preprocess.size)
    answer = client.post(
        "/explain/integrated_gradients",
        params={"detect": "false", "format": "json", "quality": "true", "steps": IG_STEPS},
        files={"file": ("face.png", upload, "image/png")},
    )
    assert answer.status_code == 200, answer.text
    served = answer.json()["quality"]
    x = whole_upload_input(upload, serving_model.preprocess)
    handle = ModelHandle(
        serving_model.engine.run, serving_model.twin, serving_model.meta.gradcam_layer
    )
    method = EXPLAINERS["integrated_gradients"]
    heatmap = method(handle).attribute(x, steps=IG_STEPS)

    report, random = bench_quality.grade_heatmap(handle, x, heatmap, method, None)
    repeat, _ = bench_quality.grade_heatmap(handle, x, heatmap, method, random)

    assert report.verdict == served["verdict"]
    for name in ("deletion_auc", "insertion_auc", "random_deletion_auc", "random_insertion_auc"):
        assert getattr(report, name) == pytest.approx(served[name], abs=1e-4), name
    assert set(report.signals) == set(served["signals"]) == {"completeness_gap"}
    assert report.signals["completeness_gap"] == pytest.approx(
        served["signals"]["completeness_gap"], abs=1e-3
    )
    assert repeat == report  # the random curves passed in change the cost, not the report


def test_the_cost_ratio_is_the_median_of_per_face_ratios() -> None:
    row = bench_quality.CostRow(map=[1.0, 3.0, 4.0], first=[1.0, 1.0, 3.0], repeat=[0.5, 0.3, 1.0])

    assert row.ratio(row.first) == pytest.approx(0.75)  # 1, 1/3, 3/4 (medians' ratio: 1/3)
    assert row.ratio(row.repeat) == pytest.approx(0.25)  # 0.5, 0.1, 0.25


def test_a_default_is_flagged_by_the_first_ratio() -> None:
    flag = bench_quality.default_flag

    assert flag(True, 0.30, 0.10) == "ok"
    assert flag(False, 0.80, 0.40) == "ok"
    assert flag(True, 0.75, 0.30) == "on, but first adds 0.75 (repeat within)"
    assert flag(True, 0.75, 0.40) == "on, but first adds 0.75 (repeat too)"
    assert flag(False, 0.12, 0.06) == "off, though first adds only 0.12"


def test_ranks_put_the_largest_first_and_ties_share_their_mean_rank() -> None:
    assert bench_quality.descending_ranks([10.0, 50.0, 10.0, 0.0]) == [2.5, 1.0, 2.5, 4.0]
    assert bench_quality.spearman([1, 2, 3, 4], [10, 20, 30, 40]) == pytest.approx(1.0)
    assert bench_quality.spearman([1, 2, 3, 4], [4, 3, 2, 1]) == pytest.approx(-1.0)


def test_every_method_takes_every_place_in_turn() -> None:
    names = ["a", "b", "c"]
    orders = [bench_quality.rotated(names, turn) for turn in range(3)]

    assert orders == [["a", "b", "c"], ["b", "c", "a"], ["c", "a", "b"]]
    assert bench_quality.rotated(names, 4) == orders[1]


def test_the_maps_built_to_fail_invert_the_order_or_move_the_values() -> None:
    values = np.arange(12, dtype=np.float64).reshape(3, 4)

    inverted = bench_quality.failing_map(values, "inverted")
    shuffled = bench_quality.failing_map(values, "shuffled")

    assert np.array_equal(np.argsort(inverted.ravel()), np.argsort(values.ravel())[::-1])
    assert shuffled.shape == values.shape
    assert sorted(shuffled.ravel()) == sorted(values.ravel())
    assert not np.array_equal(shuffled, values)
    assert np.array_equal(shuffled, bench_quality.failing_map(values, "shuffled"))  # seeded
    with pytest.raises(ValueError, match="valid: inverted, shuffled"):
        bench_quality.failing_map(values, "blurred")
