"""Run ``locustfile.py`` against a real service process and judge the run.

The code behind both the CI test (``test_load.py``) and the soak command (``python -m
tests.load``): start ``python -m service`` on a free loopback port (unless a host is given),
sample its resident memory every second, run locust headless for a bounded time, then read
locust's report and list every problem:

- anything the locustfile counted as a failure (5xx, connection errors, wrong status for a
  valid upload, a changed answer, a bad upload not refused with its 4xx, a lost request);
- a setup that failed, no ``/predict`` answered at all, locust exiting non-zero, the server
  process dying;
- the server's RSS peak in the last third of the load phase above its peak in the first third
  by more than ``rss_growth_limit_mib`` (a leak grows it; warm-up falls in the first third).

Results go to ``out_dir``: ``results.json`` (the figures and the verdict), ``rss.csv`` (memory
over time), locust's ``locust_stats.csv``, ``locust_stats_history.csv`` and
``locust_failures.csv``, and the logs of locust and of the server.
"""
from __future__ import annotations

import csv
import json
import os
import re
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, NamedTuple

import psutil

ROOT = Path(__file__).resolve().parents[2]
LOCUSTFILE = Path(__file__).resolve().parent / "locustfile.py"
ARTIFACTS = ROOT / "tests" / "artifacts" / "load"
DEFAULT_BUNDLE = ROOT / "models" / "celebs8"
SERVER_READY_TIMEOUT_S = 180.0
# locust waits this long for users to finish the requests in flight when the time is up
STOP_TIMEOUT_S = 30
# beyond run time and stop timeout: locust start-up, discovery and the unloaded baseline
LOCUST_SLACK_S = 180
MIB = 1024 * 1024
EXAMPLE_CHARS = 240
DURATION_PART = re.compile(r"(\d+)\s*([hms])")


@dataclass(frozen=True)
class LoadConfig:
    """One load run. The defaults are CI's: about a minute on a shared 2-core machine."""

    users: int = 10
    spawn_rate: float = 5.0
    run_time: str = "45s"
    host: str | None = None  # None: start a local server; else load that one (no RSS check)
    rss_growth_limit_mib: float = 64.0
    # glibc gives each thread that allocates an arena of its own (up to 8 per core) and keeps
    # freed memory there: with the default, RSS under this mix climbs for minutes before it
    # levels off (+62 MiB over 120 s here, against +15 MiB with 2 arenas), which would hide a
    # leak; 0 leaves glibc's default
    malloc_arenas: int = 2
    photos_per_class: int = 2
    model: Path = DEFAULT_BUNDLE
    data: Path | None = None  # face data root (celebs8/); None: the locustfile's default
    out_dir: Path = ARTIFACTS


@dataclass(frozen=True)
class RssCheck:
    """The server's resident memory over the load phase, in MiB."""

    start_mib: float
    end_mib: float
    first_third_peak_mib: float
    last_third_peak_mib: float
    limit_mib: float
    samples: int

    @property
    def growth_mib(self) -> float:
        return self.last_third_peak_mib - self.first_third_peak_mib

    @property
    def ok(self) -> bool:
        return self.growth_mib <= self.limit_mib


@dataclass
class LoadResult:
    config: LoadConfig
    report: dict[str, Any]
    rss: RssCheck | None
    problems: list[str] = field(default_factory=list)

    @property
    def passed(self) -> bool:
        return not self.problems

    def summary(self) -> str:
        return format_summary(self)


def seconds(duration: str) -> int:
    """Locust's duration syntax (``90``, ``45s``, ``30m``, ``1h30m``) in seconds."""
    if duration.strip().isdigit():
        return int(duration)
    parts = DURATION_PART.findall(duration)
    if not parts or DURATION_PART.sub("", duration).strip():
        raise ValueError(f"not a duration: {duration!r} (examples: 45s, 30m, 1h30m)")
    unit = {"h": 3600, "m": 60, "s": 1}
    return sum(int(value) * unit[letter] for value, letter in parts)


# -- the server and its memory -----------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def start_server(model: Path, port: int, log_file: Path, malloc_arenas: int = 0) -> subprocess.Popen:
    """``python -m service`` on 127.0.0.1:``port``, returned once ``/readyz`` answers 200.
    ``malloc_arenas``: glibc's MALLOC_ARENA_MAX for the process (0: glibc's default)."""
    command = [
        sys.executable, "-m", "service", "--model", str(model), "--host", "127.0.0.1",
        "--port", str(port), "--access-log", "false", "--log-level", "warning",
    ]
    # the service's defaults, not whatever the calling shell configured
    env = {k: v for k, v in os.environ.items() if not k.startswith("CELEBXAI_")}
    if malloc_arenas:
        env["MALLOC_ARENA_MAX"] = str(malloc_arenas)
    with log_file.open("wb") as log:
        server = subprocess.Popen(command, cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT)
    deadline = time.monotonic() + SERVER_READY_TIMEOUT_S
    while time.monotonic() < deadline:
        if server.poll() is not None:
            raise RuntimeError(f"server exited with {server.returncode}:\n{tail(log_file)}")
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/readyz", timeout=2):
                return server
        except (urllib.error.URLError, ConnectionError):
            time.sleep(0.5)
    stop_server(server)
    raise RuntimeError(f"server not ready within {SERVER_READY_TIMEOUT_S:.0f} s:\n{tail(log_file)}")


def stop_server(server: subprocess.Popen) -> None:
    server.terminate()
    try:
        server.wait(timeout=30)
    except subprocess.TimeoutExpired:
        server.kill()
        server.wait()


def tail(path: Path, lines: int = 30) -> str:
    return "\n".join(path.read_text(errors="replace").splitlines()[-lines:]) if path.exists() else ""


class Sample(NamedTuple):
    time: float  # unix time
    rss: int  # bytes, the process and its children
    threads: int = 0


class RssSampler:
    """Samples the resident set size and thread count of a process (and its children) every
    ``interval`` s."""

    def __init__(self, pid: int, interval: float = 1.0) -> None:
        self.process = psutil.Process(pid)
        self.interval = interval
        self.samples: list[Sample] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="rss-sampler", daemon=True)

    def __enter__(self) -> RssSampler:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                if self.process.status() == psutil.STATUS_ZOMBIE:
                    return
                processes = [self.process, *self.process.children(recursive=True)]
                rss = sum(p.memory_info().rss for p in processes)
                threads = sum(p.num_threads() for p in processes)
            except psutil.NoSuchProcess:
                return
            self.samples.append(Sample(time.time(), rss, threads))
            self._stop.wait(self.interval)


def check_rss(samples: list[Sample], start: float, stop: float, limit_mib: float) -> RssCheck | None:
    """Compare the peaks of the first and last third of the samples taken in [start, stop]."""
    during = [sample.rss / MIB for sample in samples if start <= sample.time <= stop]
    if len(during) < 3:
        return None
    third = len(during) // 3
    return RssCheck(
        start_mib=during[0],
        end_mib=during[-1],
        first_third_peak_mib=max(during[:third]),
        last_third_peak_mib=max(during[-third:]),
        limit_mib=limit_mib,
        samples=len(during),
    )


# -- the run -----------------------------------------------------------------------------------


def locust_command(config: LoadConfig, host: str, out_dir: Path) -> list[str]:
    return [
        sys.executable, "-m", "locust", "-f", str(LOCUSTFILE), "--headless", "--only-summary",
        "-H", host, "-u", str(config.users), "-r", str(config.spawn_rate), "-t", config.run_time,
        "--stop-timeout", str(STOP_TIMEOUT_S), "--csv", str(out_dir / "locust"),
        "--report-json", str(out_dir / "report.json"),
        "--photos-per-class", str(config.photos_per_class),
        "--logfile", str(out_dir / "locust.log"),
    ]


def run_locust(config: LoadConfig, host: str) -> tuple[int, dict[str, Any]]:
    """Run locust to the end; its exit code and the locustfile's report ({} if none)."""
    out_dir = config.out_dir
    report_file = out_dir / "report.json"
    for stale in (report_file, out_dir / "locust.log"):  # locust appends to its log file
        stale.unlink(missing_ok=True)
    env = {k: v for k, v in os.environ.items() if not k.startswith("LOCUST_")}
    if config.data is not None:
        env["CELEBXAI_DATA"] = str(config.data)
    timeout = seconds(config.run_time) + STOP_TIMEOUT_S + LOCUST_SLACK_S
    with (out_dir / "locust.out").open("wb") as output:
        try:
            code = subprocess.run(
                locust_command(config, host, out_dir), cwd=ROOT, env=env, stdout=output,
                stderr=subprocess.STDOUT, timeout=timeout, check=False,
            ).returncode
        except subprocess.TimeoutExpired:
            return -1, {}
    report = json.loads(report_file.read_text()) if report_file.exists() else {}
    return code, report


def run_load_test(config: LoadConfig) -> LoadResult:
    """One load run as ``config`` says; the result lists every problem found."""
    config.out_dir.mkdir(parents=True, exist_ok=True)
    if config.host is not None:
        code, report = run_locust(config, config.host)
        result = judge(config, code, report, rss=None)
        write_results(result, samples=[])
        return result
    port = free_port()
    server = start_server(config.model, port, config.out_dir / "server.log", config.malloc_arenas)
    try:
        with RssSampler(server.pid) as sampler:
            code, report = run_locust(config, f"http://127.0.0.1:{port}")
        alive = server.poll() is None
    finally:
        stop_server(server)
    rss = None
    if report.get("started_at"):
        rss = check_rss(sampler.samples, report["started_at"], report["stopped_at"],
                        config.rss_growth_limit_mib)
    result = judge(config, code, report, rss)
    if not alive:
        result.problems.append(f"the server died during the run:\n{tail(config.out_dir / 'server.log')}")
    write_results(result, sampler.samples)
    return result


def judge(config: LoadConfig, code: int, report: dict[str, Any], rss: RssCheck | None) -> LoadResult:
    problems = []
    logs = f"see locust.log and locust.out in {config.out_dir}"
    if code == -1:
        problems.append(f"locust did not finish in time ({logs})")
    if not report:
        problems.append(f"locust wrote no report ({logs})")
        return LoadResult(config, report, rss, problems)
    if report["setup_error"]:
        problems.append(f"setup failed: {report['setup_error']}")
    examples = report["problem_examples"]
    for kind, names in sorted(report["problems"].items()):
        counts = ", ".join(f"{name} {count}" for name, count in sorted(names.items()))
        shown = [example[:EXAMPLE_CHARS] for example in examples.get(kind, [])[:3]]
        problems.append(f"{kind}: {counts}; e.g.\n      " + "\n      ".join(shown))
    for error in report["exceptions"]:
        problems.append(f"the locustfile raised {error['count']} times: {error['error']}")
    if not report["setup_error"] and not report["answered"].get("/predict"):
        problems.append("no /predict request was answered")
    if code not in (0, -1) and not problems:
        problems.append(f"locust exited with {code} ({logs})")
    if rss is None and config.host is None and not report["setup_error"]:
        problems.append("too few RSS samples during the load phase")
    elif rss is not None and not rss.ok:
        problems.append(
            f"server RSS grew by {rss.growth_mib:.1f} MiB from the first to the last third of "
            f"the run (limit {rss.limit_mib:.0f} MiB)"
        )
    return LoadResult(config, report, rss, problems)


# -- results -----------------------------------------------------------------------------------


def write_results(result: LoadResult, samples: list[Sample]) -> None:
    out_dir = result.config.out_dir
    started = result.report.get("started_at") or (samples[0].time if samples else 0.0)
    with (out_dir / "rss.csv").open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["seconds_from_load_start", "rss_mib", "threads"])
        for sample in samples:
            writer.writerow([f"{sample.time - started:.1f}", f"{sample.rss / MIB:.1f}", sample.threads])
    rss = result.rss
    document = {
        "passed": result.passed,
        "problems": result.problems,
        "config": {k: str(v) if isinstance(v, Path) else v for k, v in asdict(result.config).items()},
        "rss": {**asdict(rss), "growth_mib": rss.growth_mib} if rss else None,
        "locust": result.report,
    }
    (out_dir / "results.json").write_text(json.dumps(document, indent=2))
    (out_dir / "summary.txt").write_text(result.summary() + "\n")


def format_summary(result: LoadResult) -> str:
    report, config = result.report, result.config
    if not report:
        return "load test: no report\n" + "\n".join(result.problems)
    lines = [
        f"load test: {config.users} users for {report['duration_s']:.0f} s against {report['host']}, "
        f"{report['photos']} face photos; endpoints {' '.join(report['endpoints_run'])}"
    ]
    if report["photos_passed_over"]:
        lines.append(f"  photos the service refused unloaded, passed over: {report['photos_passed_over']}")
    for path, why in report["endpoints_skipped"].items():
        lines.append(f"  skipped {path}: {why}")
    lines.append(
        f"  {'endpoint':<34} {'requests':>8} {'req/s':>7} {'p50 ms':>7} {'p95 ms':>7} "
        f"{'p99 ms':>7} {'failed':>6}"
    )
    for entry in report["endpoints"]:
        lines.append(
            f"  {entry['method'] + ' ' + entry['name']:<34} {entry['requests']:>8} "
            f"{entry['rps']:>7.1f} {entry['p50_ms']:>7.0f} {entry['p95_ms']:>7.0f} "
            f"{entry['p99_ms']:>7.0f} {entry['failures']:>6}"
        )
    tally = {kind: sum(names.values()) for kind, names in report["problems"].items()}
    lines.append(
        f"  5xx: {tally.get('5xx', 0)}, connection errors: {tally.get('connection', 0)}, "
        f"wrong status: {tally.get('wrong_status', 0)}, wrong answers: {tally.get('wrong_answer', 0)}, "
        f"bad inputs mishandled: {tally.get('bad_input_mishandled', 0)}, lost: {tally.get('lost', 0)}; "
        f"503 back-pressure (Retry-After): {sum(report['backpressure'].values())}"
    )
    if rss := result.rss:
        lines.append(
            f"  server RSS: {rss.start_mib:.0f} MiB at start, {rss.end_mib:.0f} MiB at end; peak "
            f"{rss.first_third_peak_mib:.0f} MiB in the first third, {rss.last_third_peak_mib:.0f} "
            f"in the last: {rss.growth_mib:+.1f} MiB (limit {rss.limit_mib:.0f}; "
            f"MALLOC_ARENA_MAX={config.malloc_arenas or 'default'})"
        )
    elif config.host is not None:
        lines.append("  server RSS: not measured (remote host)")
    lines.append(f"  results: {config.out_dir}")
    lines.append("  PASSED" if result.passed else "  FAILED:\n    " + "\n    ".join(result.problems))
    return "\n".join(lines)
