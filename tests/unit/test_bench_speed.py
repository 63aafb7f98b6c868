"""bench/bench_speed.py's rows come from the new service's GET /explain: a row per stop rule
where a method offers ``stop``, the goal on the default rule, the one-pass method where it is
listed; an old service without ``stop`` answers both rules with one set of requests."""

from __future__ import annotations

import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "bench"))

from bench_speed import ServiceRun, explain_rows, same_request  # noqa: E402

NEW = {
    "gradient": {},
    "gradcam": {"layer": None},
    "fastshap": {},
    "occlusion": {"window": 24, "stop": "converged"},
    "lime": {"num_samples": 256, "seed": 0, "stop": "converged"},
    "rise": {"num_masks": 256, "stop": "converged"},
    "smoothgrad": {"samples": 16, "stop": "converged"},
    "integrated_gradients": {"steps": 32, "stop": "fixed"},
}
OLD = {name: {k: v for k, v in p.items() if k != "stop"} for name, p in NEW.items()}


def test_rows_follow_what_the_service_offers_with_the_goals_on_the_defaults():
    rows = explain_rows(NEW)

    titles = [row.title for row in rows]
    assert titles[:3] == ["gradient saliency", "Grad-CAM", "one-pass (fastshap)"]
    assert "LIME stop=fixed" in titles and "LIME stop=converged (default)" in titles
    assert "integrated gradients stop=fixed (default)" in titles
    goals = {row.title: row.goal_passes for row in rows if row.goal_passes is not None}
    assert goals == {
        "gradient saliency": 14.0,
        "one-pass (fastshap)": 3.0,
        "occlusion stop=converged (default)": 60.0,
        "LIME stop=converged (default)": 160.0,
    }
    assert len({row.key for row in rows}) == len(rows)


def test_a_service_without_stop_or_the_one_pass_method_gets_one_row_each():
    rows = explain_rows({k: v for k, v in OLD.items() if k != "fastshap"})

    assert [row.title for row in rows if row.method == "lime"] == ["LIME (default)"]
    assert all(row.method != "fastshap" for row in rows)


def test_an_old_service_sends_one_request_for_both_rules():
    run = ServiceRun("old", "/tmp/old", "", "fp32", None, "cpu", parameters=OLD)
    fixed, converged = (row for row in explain_rows(NEW) if row.method == "lime")
    done: dict = {}

    assert same_request(run, fixed, done) is None
    assert same_request(run, converged, done) == fixed.key
    new = ServiceRun("new", "/tmp/new", "", "int8", None, "cpu", parameters=NEW)
    done = {}
    assert same_request(new, fixed, done) is None
    assert same_request(new, converged, done) is None  # stop=converged is another request
