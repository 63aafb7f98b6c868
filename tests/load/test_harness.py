"""The verdict of a load run, from synthetic locust reports and memory samples (no server)."""
from __future__ import annotations

from typing import Any

import pytest

from .harness import MIB, LoadConfig, Sample, check_rss, judge, seconds

CONFIG = LoadConfig()


def report(**changes: Any) -> dict[str, Any]:
    """A clean locust report: /predict answered, nothing wrong."""
    clean: dict[str, Any] = {
        "host": "http://127.0.0.1:1234", "users": 10, "setup_error": None,
        "started_at": 100.0, "stopped_at": 145.0, "duration_s": 45.0, "photos": 16, "photos_passed_over": {},
        "endpoints_run": ["/predict"], "endpoints_skipped": {},
        "endpoints": [{"name": "/predict", "method": "POST", "requests": 900, "failures": 0,
                       "rps": 20.0, "p50_ms": 20, "p95_ms": 90, "p99_ms": 200,
                       "avg_ms": 30.0, "max_ms": 400.0}],
        "problems": {}, "problem_examples": {}, "backpressure": {}, "answered": {"/predict": 900},
        "lost": {}, "exceptions": [],
    }
    return clean | changes


def flat_rss(mib: float = 1000.0) -> Any:
    return check_rss([Sample(100.0 + i, int(mib * MIB)) for i in range(46)], 100.0, 145.0, 64.0)


@pytest.mark.parametrize(
    ("text", "expected"), [("90", 90), ("45s", 45), ("30m", 1800), ("1h30m", 5400), ("2h 5s", 7205)]
)
def test_durations_read_like_locusts(text, expected):
    assert seconds(text) == expected


@pytest.mark.parametrize("text", ["", "fast", "10x", "5m later"])
def test_a_bad_duration_is_refused(text):
    with pytest.raises(ValueError, match="not a duration"):
        seconds(text)


def test_rss_growth_compares_the_peaks_of_the_first_and_last_thirds():
    # warm-up inside the first third, then flat, then 80 MiB more in the last third
    mib = [900, 1000] + [1000] * 28 + [1080] * 15
    samples = [Sample(100.0 + i, int(m * MIB)) for i, m in enumerate(mib)]
    samples.append(Sample(200.0, 5000 * MIB))  # after the load phase: ignored

    rss = check_rss(samples, 100.0, 145.0, limit_mib=64.0)

    assert (rss.start_mib, rss.end_mib, rss.samples) == (900, 1080, 45)
    assert (rss.first_third_peak_mib, rss.last_third_peak_mib, rss.growth_mib) == (1000, 1080, 80)
    assert not rss.ok


def test_a_warm_up_in_the_first_third_is_not_growth():
    samples = [Sample(100.0 + i, int((700 + min(i, 10) * 30) * MIB)) for i in range(46)]

    rss = check_rss(samples, 100.0, 145.0, limit_mib=64.0)

    assert rss.growth_mib == 0 and rss.ok


def test_a_clean_run_passes():
    assert judge(CONFIG, 0, report(), flat_rss()).problems == []


def test_backpressure_alone_passes():
    result = judge(CONFIG, 0, report(backpressure={"/lime": 3}), flat_rss())

    assert result.passed
    assert "503 back-pressure (Retry-After): 3" in result.summary()


@pytest.mark.parametrize(
    ("kind", "name"),
    [("5xx", "/predict"), ("connection", "/lime"), ("wrong_status", "/saliency"),
     ("wrong_answer", "/predict"), ("bad_input_mishandled", "/predict (bad input)"), ("lost", "/predict")],
)
def test_every_kind_of_failure_fails_the_run(kind, name):
    failed = report(problems={kind: {name: 2}}, problem_examples={kind: [f"{name}: what happened"]})

    result = judge(CONFIG, 1, failed, flat_rss())

    assert len(result.problems) == 1
    assert result.problems[0].startswith(f"{kind}: {name} 2; e.g.")
    assert "what happened" in result.problems[0]
    assert "FAILED" in result.summary()


def test_memory_growth_over_the_limit_fails_the_run():
    samples = [Sample(100.0 + i, int((1000 + 3 * i) * MIB)) for i in range(46)]  # 3 MiB/s: peaks at 14 s and 45 s

    result = judge(CONFIG, 0, report(), check_rss(samples, 100.0, 145.0, limit_mib=64.0))

    assert result.problems == [
        "server RSS grew by 93.0 MiB from the first to the last third of the run (limit 64 MiB)"
    ]


def test_a_run_that_did_nothing_fails():
    assert judge(CONFIG, 0, report(answered={}), flat_rss()).problems == [
        "no /predict request was answered"
    ]


def test_a_setup_failure_or_missing_report_fails():
    setup = judge(CONFIG, 2, report(setup_error="RuntimeError: no face photos", answered={}), None)
    missing = judge(CONFIG, 1, {}, None)

    assert setup.problems == ["setup failed: RuntimeError: no face photos"]
    assert missing.problems[0].startswith("locust wrote no report")


def test_locust_errors_outside_the_checks_fail_the_run():
    raised = report(exceptions=[{"error": "KeyError('label')", "count": 4}])

    assert judge(CONFIG, 1, raised, flat_rss()).problems == [
        "the locustfile raised 4 times: KeyError('label')"
    ]
    assert judge(CONFIG, 1, report(), flat_rss()).problems[0].startswith("locust exited with 1")


def test_a_remote_host_is_judged_without_memory():
    result = judge(LoadConfig(host="http://api:8000"), 0, report(), None)

    assert result.passed
    assert "not measured (remote host)" in result.summary()
