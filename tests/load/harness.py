"""Run ``locustfile.py`` against a real service process and judge the run.

The code behind both the CI test (``test_load.py``) and the soak command (``python -m
tests.load soak``): start the service as the README does (``python -m service``, only
``--port`` added, and ``--model`` for another bundle; no allocator or other variables set),
sample its resident memory every second, run locust headless for a bounded time, then read
locust's report and list every problem:

- anything the locustfile counted as a failure (5xx, connection errors, wrong status for a
  valid upload, a changed answer, a bad upload not refused with its 4xx, a lost request);
- a setup that failed, no ``/predict`` answered at all, locust exiting non-zero, the server
  process dying;
- memory that does not level off: the least-squares slope of the server's RSS over the last
  half of the load phase (after warm-up) above ``rss_slope_limit_mib_per_min``, or its peak
  above ``rss_peak_ratio_limit`` times its RSS at the end of warm-up. A slope, not a
  comparison of peaks: growth that starts in the first seconds and goes on stays visible.

Results go to ``out_dir``: ``results.json`` (the figures and the verdict), ``rss.csv`` and
``rss.png`` (memory over time), locust's ``locust_stats.csv``, ``locust_stats_history.csv``
and ``locust_failures.csv``, and the logs of locust and of the server.
"""

from __future__ import annotations

import csv
import json
import os
import random
import re
import socket
import subprocess
import sys
import threading
import time
import urllib.request
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, NamedTuple

import psutil

from .plot import plot_rss

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
    """One load run. The defaults are CI's: 90 s on a shared 2-core machine; ``SOAK`` is the
    long run of ``python -m tests.load soak``."""

    users: int = 10
    spawn_rate: float = 5.0
    run_time: str = "90s"
    host: str | None = None  # None: start a local server; else load that one (no RSS check)
    # RSS is judged after this: the model's buffers, thread pools and caches filling up
    warmup_s: float = 30.0
    # Freed blocks go back to the system, so RSS saw-tooths by about +-10 MiB, and over CI's
    # 45 s window a flat run has fitted +12 MiB/min: a wider bound than the soak's 6, still
    # half of the 59 MiB/min of the code before the service set its own malloc policy
    rss_slope_limit_mib_per_min: float = 30.0
    rss_peak_ratio_limit: float = 1.5  # peak over the RSS at the end of warm-up
    photos_per_class: int = 2
    model: Path = DEFAULT_BUNDLE
    data: Path | None = None  # face data root (celebs8/); None: the locustfile's default
    out_dir: Path = ARTIFACTS


# 6 MiB/min: at most 30 MiB of growth over the last 5 minutes of 10
SOAK = LoadConfig(
    users=32,
    spawn_rate=8.0,
    run_time="10m",
    warmup_s=60.0,
    rss_slope_limit_mib_per_min=6.0,
    out_dir=ROOT / "tests" / "artifacts" / "soak",
)


@dataclass(frozen=True)
class RssCheck:
    """The server's resident memory over the load phase, in MiB; judged over the last half
    (never earlier than the end of warm-up)."""

    start_mib: float
    warm_mib: float  # at the end of warm-up
    end_mib: float
    peak_mib: float
    slope_mib_per_min: float  # least-squares fit over the judged window
    window_start_s: float  # the judged window, in seconds from the start of the load
    window_end_s: float
    slope_limit_mib_per_min: float
    peak_ratio_limit: float
    samples: int

    @property
    def window_s(self) -> float:
        return self.window_end_s - self.window_start_s

    @property
    def window_growth_mib(self) -> float:
        """The fitted growth over the judged window."""
        return self.slope_mib_per_min * self.window_s / 60

    @property
    def peak_ratio(self) -> float:
        return self.peak_mib / self.warm_mib

    @property
    def slope_ok(self) -> bool:
        return self.slope_mib_per_min <= self.slope_limit_mib_per_min

    @property
    def peak_ok(self) -> bool:
        return self.peak_ratio <= self.peak_ratio_limit

    @property
    def ok(self) -> bool:
        return self.slope_ok and self.peak_ok


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


# Ports for the services under test: above Ray's worker ports (10002-19999 by default) and below
# the kernel's ephemeral range, from which Ray's own servers take theirs (binding port 0). A port
# the kernel handed out (bind to 0) was free only then: a Ray started next could take it for a
# gRPC server before the Serve proxy bound it, and the proxy's /readyz then answered HTTP/2.
SERVICE_PORTS = (20000, 32768)


def _ephemeral_start() -> int:
    try:
        with open("/proc/sys/net/ipv4/ip_local_port_range", encoding="ascii") as ports:
            return int(ports.read().split()[0])
    except (OSError, ValueError, IndexError):
        return SERVICE_PORTS[1]


def free_port() -> int:
    """A port free on every address now, outside the ranges Ray and the kernel hand out (the
    kernel's choice where the range is too small)."""
    low, high = SERVICE_PORTS[0], min(SERVICE_PORTS[1], _ephemeral_start())
    for port in random.Random().sample(range(low, high), min(64, max(high - low, 0))):
        with socket.socket() as sock:
            try:
                sock.bind(("0.0.0.0", port))
            except OSError:
                continue
            return port
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def server_command(
    port: int, model: Path = DEFAULT_BUNDLE, options: Sequence[str] = ()
) -> list[str]:
    """The README's serve command on ``port`` (``--model`` only for another bundle), with
    ``options`` added (``["--ray"]`` for the Ray Serve host, say)."""
    command = [sys.executable, "-m", "service", *options, "--port", str(port)]
    if model.resolve() != DEFAULT_BUNDLE.resolve():
        command += ["--model", str(model)]
    return command


def start_server(
    model: Path,
    port: int,
    log_file: Path,
    options: Sequence[str] = (),
    ready_timeout_s: float = SERVER_READY_TIMEOUT_S,
    root: Path = ROOT,
) -> subprocess.Popen:
    """``python -m service [options]`` on 127.0.0.1:``port``, returned once ``/readyz`` answers
    200. The environment is the caller's minus every ``CELEBXAI_`` and ``MALLOC_`` variable: the
    service's own defaults, its own allocator policy (``service.inference.allocator``). ``root`` is
    the checkout it runs from (``python -m`` imports ``service`` from there: another commit's
    worktree runs that commit's service)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("CELEBXAI_", "MALLOC_"))}
    with log_file.open("wb") as log:
        server = subprocess.Popen(
            server_command(port, model, options),
            cwd=root,
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
        )
    deadline = time.monotonic() + ready_timeout_s
    while time.monotonic() < deadline:
        if server.poll() is not None:
            raise RuntimeError(f"server exited with {server.returncode}:\n{tail(log_file)}")
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/readyz", timeout=2):
                return server
        # not listening yet, 503 not_ready, or (a busy machine) no answer within the timeout
        except OSError:
            time.sleep(0.5)
        except BaseException:
            stop_server(server)
            raise
    stop_server(server)
    raise RuntimeError(f"server not ready within {ready_timeout_s:.0f} s:\n{tail(log_file)}")


def stop_server(server: subprocess.Popen) -> None:
    server.terminate()
    try:
        server.wait(timeout=30)
    except subprocess.TimeoutExpired:
        server.kill()
        server.wait()


def tail(path: Path, lines: int = 30) -> str:
    return (
        "\n".join(path.read_text(errors="replace").splitlines()[-lines:]) if path.exists() else ""
    )


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

    @property
    def peak_mib(self) -> float:
        """The largest RSS sampled so far (MiB); 0 before the first sample."""
        return max((sample.rss for sample in self.samples), default=0) / MIB


def check_rss(
    samples: list[Sample], start: float, stop: float, config: LoadConfig
) -> RssCheck | None:
    """Judge the samples taken in [start, stop]: the slope over the last half (from the end
    of warm-up at the earliest) and the peak against the RSS at the end of warm-up."""
    during = [sample for sample in samples if start <= sample.time <= stop]
    window_from = max(start + config.warmup_s, (start + stop) / 2)
    window = [sample for sample in during if sample.time >= window_from]
    if len(window) < 3:
        return None
    warm = min(window_from, start + config.warmup_s)
    warm_mib = next(sample.rss for sample in during if sample.time >= warm) / MIB
    return RssCheck(
        start_mib=during[0].rss / MIB,
        warm_mib=warm_mib,
        end_mib=during[-1].rss / MIB,
        peak_mib=max(sample.rss for sample in during) / MIB,
        slope_mib_per_min=slope_per_minute(window),
        window_start_s=window[0].time - start,
        window_end_s=window[-1].time - start,
        slope_limit_mib_per_min=config.rss_slope_limit_mib_per_min,
        peak_ratio_limit=config.rss_peak_ratio_limit,
        samples=len(during),
    )


def slope_per_minute(samples: list[Sample]) -> float:
    """Least-squares slope of RSS over time, MiB per minute."""
    times = [sample.time for sample in samples]
    values = [sample.rss / MIB for sample in samples]
    mean_t, mean_v = sum(times) / len(times), sum(values) / len(values)
    spread = sum((t - mean_t) ** 2 for t in times)
    if spread == 0:
        return 0.0
    covariance = sum((t - mean_t) * (v - mean_v) for t, v in zip(times, values, strict=True))
    return covariance / spread * 60


# -- the run -----------------------------------------------------------------------------------


def locust_command(config: LoadConfig, host: str, out_dir: Path) -> list[str]:
    return [
        sys.executable,
        "-m",
        "locust",
        "-f",
        str(LOCUSTFILE),
        "--headless",
        "--only-summary",
        "-H",
        host,
        "-u",
        str(config.users),
        "-r",
        str(config.spawn_rate),
        "-t",
        config.run_time,
        "--stop-timeout",
        str(STOP_TIMEOUT_S),
        "--csv",
        str(out_dir / "locust"),
        "--report-json",
        str(out_dir / "report.json"),
        "--photos-per-class",
        str(config.photos_per_class),
        "--logfile",
        str(out_dir / "locust.log"),
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
                locust_command(config, host, out_dir),
                cwd=ROOT,
                env=env,
                stdout=output,
                stderr=subprocess.STDOUT,
                timeout=timeout,
                check=False,
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
    server = start_server(config.model, port, config.out_dir / "server.log")
    try:
        with RssSampler(server.pid) as sampler:
            code, report = run_locust(config, f"http://127.0.0.1:{port}")
        alive = server.poll() is None
    finally:
        stop_server(server)
    rss = None
    if report.get("started_at"):
        rss = check_rss(sampler.samples, report["started_at"], report["stopped_at"], config)
    result = judge(config, code, report, rss)
    if not alive:
        result.problems.append(
            f"the server died during the run:\n{tail(config.out_dir / 'server.log')}"
        )
    write_results(result, sampler.samples)
    return result


def judge(
    config: LoadConfig, code: int, report: dict[str, Any], rss: RssCheck | None
) -> LoadResult:
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
    elif rss is not None:
        if not rss.slope_ok:
            problems.append(
                f"server RSS still grows: {rss.slope_mib_per_min:+.1f} MiB/min over the last "
                f"{rss.window_s:.0f} s (limit {rss.slope_limit_mib_per_min:g} MiB/min)"
            )
        if not rss.peak_ok:
            problems.append(
                f"server RSS peaked at {rss.peak_mib:.0f} MiB, {rss.peak_ratio:.2f} x its "
                f"{rss.warm_mib:.0f} MiB after warm-up (limit {rss.peak_ratio_limit:g} x)"
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
            writer.writerow(
                [f"{sample.time - started:.1f}", f"{sample.rss / MIB:.1f}", sample.threads]
            )
    rss = result.rss
    if samples:
        plot_rss(samples, started, rss, out_dir / "rss.png")
    figures = (
        {"window_growth_mib": rss.window_growth_mib, "peak_ratio": rss.peak_ratio} if rss else {}
    )
    document = {
        "passed": result.passed,
        "problems": result.problems,
        "config": {
            k: str(v) if isinstance(v, Path) else v for k, v in asdict(result.config).items()
        },
        "rss": {**asdict(rss), **figures} if rss else None,
        "shed_rate": shed_rate(result.report) if result.report else None,
        "locust": result.report,
    }
    (out_dir / "results.json").write_text(json.dumps(document, indent=2))
    (out_dir / "summary.txt").write_text(result.summary() + "\n")


def shed_rate(report: dict[str, Any]) -> float:
    """The share of valid explanation requests refused with 503 ``overloaded``."""
    shed = sum(report["backpressure"].values())
    served = sum(
        entry["requests"]
        for entry in report["endpoints"]
        if entry["name"] in report["endpoints_run"] and entry["name"] != "/predict"
    )
    return shed / (shed + served) if shed + served else 0.0


def format_summary(result: LoadResult) -> str:
    report, config = result.report, result.config
    if not report:
        return "load test: no report\n" + "\n".join(result.problems)
    lines = [
        f"load test: {config.users} users for {report['duration_s']:.0f} s "
        f"against {report['host']}, "
        f"{report['photos']} face photos; endpoints {' '.join(report['endpoints_run'])}"
    ]
    if report["photos_passed_over"]:
        lines.append(
            f"  photos the service refused unloaded, passed over: {report['photos_passed_over']}"
        )
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
        f"wrong status: {tally.get('wrong_status', 0)}, "
        f"wrong answers: {tally.get('wrong_answer', 0)}, "
        f"bad inputs mishandled: {tally.get('bad_input_mishandled', 0)}, "
        f"lost: {tally.get('lost', 0)}; "
        f"503 back-pressure (Retry-After): {sum(report['backpressure'].values())}"
    )
    answered = sum(entry["requests"] for entry in report["endpoints"])
    lines.append(
        f"  requests answered: {answered}; explanations shed with 503 overloaded: "
        f"{shed_rate(report):.1%}"
    )
    if rss := result.rss:
        lines.append(
            f"  server RSS: {rss.start_mib:.0f} MiB at start, {rss.warm_mib:.0f} after warm-up "
            f"({config.warmup_s:.0f} s), {rss.end_mib:.0f} at end, peak {rss.peak_mib:.0f} "
            f"({rss.peak_ratio:.2f} x after warm-up; limit {rss.peak_ratio_limit:g} x)"
        )
        lines.append(
            f"  RSS slope over the last {rss.window_s:.0f} s: {rss.slope_mib_per_min:+.1f} MiB/min "
            f"({rss.window_growth_mib:+.1f} MiB; limit {rss.slope_limit_mib_per_min:g} MiB/min)"
        )
        lines.append(f"  RSS over time: {config.out_dir / 'rss.png'}, {config.out_dir / 'rss.csv'}")
    elif config.host is not None:
        lines.append("  server RSS: not measured (remote host)")
    lines.append(f"  results: {config.out_dir}")
    lines.append(
        "  PASSED" if result.passed else "  FAILED:\n    " + "\n    ".join(result.problems)
    )
    return "\n".join(lines)
