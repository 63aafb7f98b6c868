"""The verdict of a load run, from synthetic locust reports and memory samples (no server)."""

from __future__ import annotations

import socket
from pathlib import Path
from typing import Any

import pytest

from .harness import MIB, LoadConfig, Sample, check_rss, free_port, judge, seconds

CONFIG = LoadConfig(rss_slope_limit_mib_per_min=6.0)


def report(**changes: Any) -> dict[str, Any]:
    """A clean locust report: /predict answered, nothing wrong."""
    clean: dict[str, Any] = {
        "host": "http://127.0.0.1:1234",
        "users": 10,
        "setup_error": None,
        "started_at": 100.0,
        "stopped_at": 145.0,
        "duration_s": 45.0,
        "photos": 16,
        "photos_passed_over": {},
        "endpoints_run": ["/predict"],
        "endpoints_skipped": {},
        "endpoints": [
            {
                "name": "/predict",
                "method": "POST",
                "requests": 900,
                "failures": 0,
                "rps": 20.0,
                "p50_ms": 20,
                "p95_ms": 90,
                "p99_ms": 200,
                "avg_ms": 30.0,
                "max_ms": 400.0,
            }
        ],
        "problems": {},
        "problem_examples": {},
        "backpressure": {},
        "answered": {"/predict": 900},
        "lost": {},
        "exceptions": [],
    }
    return clean | changes


def rss_of(mib: list[float], config: LoadConfig = CONFIG) -> Any:
    """The verdict on one sample a second from t=100 s, the load phase being all of them."""
    samples = [Sample(100.0 + i, int(m * MIB)) for i, m in enumerate(mib)]
    return check_rss(samples, 100.0, 100.0 + len(mib) - 1, config)


def flat_rss(mib: float = 1000.0) -> Any:
    return rss_of([mib] * 91)


@pytest.mark.parametrize(
    ("text", "expected"), [("90", 90), ("45s", 45), ("30m", 1800), ("1h30m", 5400), ("2h 5s", 7205)]
)
def test_durations_read_like_locusts(text, expected):
    assert seconds(text) == expected


@pytest.mark.parametrize("text", ["", "fast", "10x", "5m later"])
def test_a_bad_duration_is_refused(text):
    with pytest.raises(ValueError, match="not a duration"):
        seconds(text)


def test_rss_is_judged_by_its_slope_over_the_last_half_after_warm_up():
    # 30 s of warm-up (+300 MiB), flat to 45 s, then +1 MiB every 10 s (6 MiB/min) to 90 s
    mib = [700 + 10 * i for i in range(30)] + [1000] * 16 + [1000 + (i + 1) / 10 for i in range(45)]
    samples = [Sample(100.0 + i, int(m * MIB)) for i, m in enumerate(mib)]
    samples.append(Sample(300.0, 5000 * MIB))  # after the load phase: ignored

    rss = check_rss(samples, 100.0, 190.0, CONFIG)

    assert (rss.start_mib, rss.warm_mib, rss.end_mib, rss.peak_mib) == (700, 1000, 1004.5, 1004.5)
    assert (rss.window_start_s, rss.window_end_s, rss.samples) == (45, 90, 91)
    assert rss.slope_mib_per_min == pytest.approx(6.0, abs=0.2)
    assert rss.window_growth_mib == pytest.approx(4.5, abs=0.2)


def test_growth_that_starts_at_once_and_goes_on_fails():
    # no plateau at all: +2 MiB/s from the first second; peaks of thirds would not tell it
    # apart from a warm-up, the slope over the last half does
    rss = rss_of([950 + 2 * i for i in range(91)])

    assert rss.slope_mib_per_min == pytest.approx(120.0)
    assert not rss.slope_ok and not rss.ok


def test_a_warm_up_is_not_growth():
    rss = rss_of([700 + min(i, 25) * 12 for i in range(91)])

    assert rss.slope_mib_per_min == 0 and rss.ok


def test_a_peak_far_above_the_warm_rss_fails_even_when_it_falls_back():
    # flat at 1000 MiB but one burst to 1600 MiB in the middle
    rss = rss_of([1000] * 40 + [1600] * 5 + [1000] * 46)

    assert rss.peak_ratio == pytest.approx(1.6)
    assert rss.slope_ok and not rss.peak_ok


def test_too_few_samples_after_warm_up_give_no_verdict():
    short = LoadConfig(warmup_s=60.0)

    assert rss_of([1000] * 61, short) is None


def test_a_clean_run_passes():
    assert judge(CONFIG, 0, report(), flat_rss()).problems == []


def test_backpressure_alone_passes():
    result = judge(CONFIG, 0, report(backpressure={"/lime": 3}), flat_rss())

    assert result.passed
    assert "503 back-pressure (Retry-After): 3" in result.summary()


@pytest.mark.parametrize(
    ("kind", "name"),
    [
        ("5xx", "/predict"),
        ("connection", "/lime"),
        ("wrong_status", "/saliency"),
        ("wrong_answer", "/predict"),
        ("bad_input_mishandled", "/predict (bad input)"),
        ("lost", "/predict"),
    ],
)
def test_every_kind_of_failure_fails_the_run(kind, name):
    failed = report(problems={kind: {name: 2}}, problem_examples={kind: [f"{name}: what happened"]})

    result = judge(CONFIG, 1, failed, flat_rss())

    assert len(result.problems) == 1
    assert result.problems[0].startswith(f"{kind}: {name} 2; e.g.")
    assert "what happened" in result.problems[0]
    assert "FAILED" in result.summary()


def test_memory_growth_over_the_limits_fails_the_run():
    rising = rss_of([1000 + i for i in range(91)])  # 60 MiB/min
    burst = rss_of([1000] * 40 + [1600] * 5 + [1000] * 46)

    rising_problems = judge(CONFIG, 0, report(), rising).problems
    burst_problems = judge(CONFIG, 0, report(), burst).problems

    assert rising_problems == [
        "server RSS still grows: +60.0 MiB/min over the last 45 s (limit 6 MiB/min)"
    ]
    assert burst_problems == [
        "server RSS peaked at 1600 MiB, 1.60 x its 1000 MiB after warm-up (limit 1.5 x)"
    ]


def test_the_summary_gives_the_memory_figures_and_the_shed_rate():
    shed = report(
        endpoints_run=["/lime", "/predict"],
        backpressure={"/lime": 1},
        endpoints=[
            *report()["endpoints"],
            {
                "name": "/lime",
                "method": "POST",
                "requests": 3,
                "failures": 0,
                "rps": 0.1,
                "p50_ms": 900,
                "p95_ms": 2000,
                "p99_ms": 2500,
                "avg_ms": 1000.0,
                "max_ms": 2500.0,
            },
        ],
    )

    summary = judge(CONFIG, 0, shed, flat_rss()).summary()

    assert "explanations shed with 503 overloaded: 25.0%" in summary
    assert "1000 MiB at start, 1000 after warm-up (30 s), 1000 at end, peak 1000" in summary
    assert "RSS slope over the last 45 s: +0.0 MiB/min" in summary


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


def test_a_free_port_is_bindable_and_outside_the_ranges_ray_and_the_kernel_hand_out() -> None:
    """Ray's own servers bind port 0 (the kernel's ephemeral range) and its workers take
    10002-19999: a service port from either could be taken under the service before it binds."""
    ephemeral = int(Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()[0])
    for _ in range(20):
        port = free_port()
        assert 20000 <= port < min(32768, ephemeral)
        with socket.socket() as sock:
            sock.bind(("127.0.0.1", port))
