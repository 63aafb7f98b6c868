"""Mixed traffic on the single-process service and on the Ray Serve host, in one run.

Starts each service the way users do (``python -m service``, then ``python -m service --ray``
with 1 and with 2 Explain replicas), each on a free loopback port, and loads it with the CI load
test's locustfile (``tests/load``: 16 users posting real face photos, mostly ``/predict``, some
``/saliency``, ``/occlusion`` and ``/lime``, every answer checked). For each it prints the
explanation throughput and p95 (every answered explanation as one distribution), the share of
explanations shed with 503 ``overloaded``, ``/predict``'s throughput and p95 alongside, the checks
that failed, and the CPU seconds per answered request of the service's processes (the process
and all its descendants: for Ray, the raylet, the GCS and every worker that hosts a replica),
read from psutil before and after the load.

    python bench/bench_ray.py [--users 16] [--run-time 40s] [--explain-cpus 0.75]

Both Ray runs reserve ``--explain-cpus`` per Explain replica, so that two replicas and the
Predict replica (0.5 CPU) fit on a 2-core machine. The load generator runs on the same machine
and takes its share of the cores: compare the rows of one run, not runs of different machines.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import subprocess
import sys
from collections import Counter
from pathlib import Path
from typing import Any, NamedTuple

import psutil

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from tests.load.harness import (  # noqa: E402
    DEFAULT_BUNDLE,
    LoadConfig,
    free_port,
    run_locust,
    start_server,
    stop_server,
)

OUT = ROOT / "bench" / "results" / "ray"
PREDICT = "/predict"


class Case(NamedTuple):
    label: str
    options: list[str]


def cases(explain_cpus: float) -> list[Case]:
    ray = ["--ray", "--ray-explain-cpus", str(explain_cpus)]
    return [
        Case("single process", []),
        Case("Ray, 1 Explain replica", [*ray, "--ray-explain-replicas", "1"]),
        Case("Ray, 2 Explain replicas", [*ray, "--ray-explain-replicas", "2"]),
    ]


class ProcessCpu(NamedTuple):
    started: float  # psutil's create_time: tells a reused pid apart
    seconds: float  # user + system


def tree(pid: int) -> list[psutil.Process]:
    """Process ``pid`` and every descendant ([] once it is gone)."""
    try:
        root = psutil.Process(pid)
        return [root, *root.children(recursive=True)]
    except psutil.NoSuchProcess:
        return []


def tree_cpu(pid: int) -> dict[int, ProcessCpu]:
    """CPU seconds so far of process ``pid`` and every descendant, by pid."""
    readings = {}
    for process in tree(pid):
        try:
            with process.oneshot():
                times = process.cpu_times()
                readings[process.pid] = ProcessCpu(process.create_time(), times.user + times.system)
        except psutil.NoSuchProcess:
            continue
    return readings


def cpu_used(before: dict[int, ProcessCpu], after: dict[int, ProcessCpu]) -> tuple[float, int]:
    """CPU seconds spent between two readings, and how many processes ended in between (their
    time after the first reading is missing from the sum)."""
    used = 0.0
    for pid, reading in after.items():
        earlier = before.get(pid)
        # a process started since the first reading (or a reused pid): all its time is new
        new = earlier is None or earlier.started != reading.started
        used += reading.seconds - (0.0 if new or earlier is None else earlier.seconds)
    ended = sum(
        1
        for pid, reading in before.items()
        if pid not in after or after[pid].started != reading.started
    )
    return used, ended


def tree_niceness(pid: int) -> Counter[int]:
    """How many of the processes of ``pid``'s tree run at each nice value (Ray starts its
    workers, the replicas among them, at nice 15: on a shared machine they yield to the rest)."""
    values: Counter[int] = Counter()
    for process in tree(pid):
        try:
            values[process.nice()] += 1
        except psutil.NoSuchProcess:
            continue
    return values


def uptime() -> str:
    return subprocess.run(["uptime"], capture_output=True, text=True, check=False).stdout.strip()


@dataclasses.dataclass
class Row:
    case: Case
    report: dict[str, Any]
    cpu_seconds: float
    processes_ended: int
    locust_exit: int
    load_before: str
    niceness: Counter[int]

    def entry(self, name: str) -> dict[str, Any]:
        found = [e for e in self.report["endpoints"] if e["name"] == name and e["method"] == "POST"]
        return found[0] if found else {"requests": 0, "rps": 0.0, "p95_ms": float("nan")}

    @property
    def answered(self) -> int:
        return sum(self.report["answered"].values())

    @property
    def shed(self) -> int:
        return sum(self.report["backpressure"].values())

    @property
    def failed(self) -> int:
        return sum(sum(names.values()) for names in self.report["problems"].values())


def measure(case: Case, args: argparse.Namespace) -> Row:
    out = OUT / case.label.lower().replace(",", "").replace(" ", "_")
    out.mkdir(parents=True, exist_ok=True)
    load_before = uptime().split("load average:")[-1].strip()
    port = free_port()
    print(f"{case.label}: python -m service {' '.join(case.options)} ...", flush=True)
    server = start_server(args.model, port, out / "server.log", case.options, args.ready_timeout)
    try:
        config = LoadConfig(
            users=args.users,
            spawn_rate=float(args.users),
            run_time=args.run_time,
            host=f"http://127.0.0.1:{port}",
            model=args.model,
            data=args.data,
            out_dir=out,
        )
        before = tree_cpu(server.pid)
        code, report = run_locust(config, config.host or "")
        after = tree_cpu(server.pid)
        niceness = tree_niceness(server.pid)
    finally:
        survivors = [process.pid for process in tree(server.pid)]
        stop_server(server)
        _stop_leftovers(survivors)
    if not report:
        raise SystemExit(f"{case.label}: locust wrote no report (see {out})")
    if report["setup_error"]:
        raise SystemExit(f"{case.label}: {report['setup_error']}")
    used, ended = cpu_used(before, after)
    return Row(case, report, used, ended, code, load_before, niceness)


def _stop_leftovers(pids: list[int]) -> None:
    """Processes of the service still running once it exited (a Ray worker that outlived its
    raylet, say): stopped by pid, and said."""
    for pid in pids:
        try:
            process = psutil.Process(pid)
            if process.status() == psutil.STATUS_ZOMBIE:
                continue
            print(f"  stopping leftover process {pid}: {' '.join(process.cmdline())[:80]}")
            process.terminate()
            process.wait(timeout=10)
        except psutil.NoSuchProcess:
            continue
        except psutil.TimeoutExpired:
            process.kill()


def print_table(rows: list[Row], args: argparse.Namespace) -> None:
    print(
        f"\n{args.users} users of mixed traffic for {args.run_time} each (weights in "
        "tests/load/locustfile.py: /predict 80, /saliency 10, /occlusion 5, /lime 5, bad uploads 3)"
    )
    print(
        f"{'service':<26} {'expl req/s':>10} {'expl p95 ms':>11} {'shed 503':>9} "
        f"{'predict req/s':>13} {'predict p95 ms':>14} {'failed':>6} {'CPU s/req':>9} "
        f"{'procs by nice':>13} {'load avg before':>16}"
    )
    for row in rows:
        explanations = row.report["explanations"]
        predict = row.entry(PREDICT)
        offered = explanations["requests"] + row.shed
        shed = row.shed / offered if offered else 0.0
        nice = ",".join(f"{n}@{value}" for value, n in sorted(row.niceness.items()))
        print(
            f"{row.case.label:<26} {explanations['rps']:>10.2f} {explanations['p95_ms']:>11.0f} "
            f"{shed:>9.1%} {predict['rps']:>13.1f} {predict['p95_ms']:>14.0f} {row.failed:>6} "
            f"{row.cpu_seconds / max(row.answered, 1):>9.3f} {nice:>13} {row.load_before:>16}"
        )
    print("procs by nice: the service's processes, as count@nice value")
    for row in rows:
        if row.processes_ended:
            print(
                f"  {row.case.label}: {row.processes_ended} of its processes ended during the "
                "load; their CPU after the first reading is not counted"
            )
        if row.failed or row.locust_exit:
            print(
                f"  {row.case.label}: failed checks {row.report['problems']} "
                f"(locust exit {row.locust_exit})"
            )


def get_args_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--users", type=int, default=16, help="concurrent users (default 16)")
    parser.add_argument(
        "--run-time", default="40s", help="load per service, locust syntax (default 40s)"
    )
    parser.add_argument(
        "--explain-cpus",
        type=float,
        default=0.75,
        help="CPUs Ray reserves per Explain replica in both Ray runs (default 0.75)",
    )
    parser.add_argument(
        "--ready-timeout",
        type=float,
        default=600.0,
        help="seconds a service may take to become ready (default 600: Ray's workers run at "
        "nice 15 and start slowly on a busy machine)",
    )
    parser.add_argument(
        "--model", type=Path, default=DEFAULT_BUNDLE, help="bundle (default models/celebs8)"
    )
    parser.add_argument(
        "--data",
        type=Path,
        default=None,
        help="face data root holding celebs8/ (default: $CELEBXAI_DATA or ../shared/data)",
    )
    return parser


def main(args: argparse.Namespace) -> None:
    print(f"{os.cpu_count()} CPU cores; before: {uptime()}", flush=True)
    rows = [measure(case, args) for case in cases(args.explain_cpus)]
    print_table(rows, args)
    print(f"after: {uptime()}")


if __name__ == "__main__":
    main(get_args_parser().parse_args())
