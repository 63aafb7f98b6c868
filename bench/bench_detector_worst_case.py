"""Face detection's worst cases against the service as users start it.

Starts ``python -m service`` on a free port exactly as the README does (through
``tests/hostile/conftest.launch``) from a checkout -- this one, or ``--checkout DIR``, e.g. a
``git worktree`` of an older commit for before/after figures -- and prints:

1. for each worst-case upload (``tests/hostile/detector_uploads.py``: a blank 20000x16 PNG, a
   blank 8000x16 PNG, a 12-megapixel photo without a face) sent alone: the answer (status and
   error code), its time, the server's RSS before, after and at its peak (sampled every 10 ms),
   and the pixels and seconds of face search the service counted for it (/metrics; "n/a" where
   the service has no such metric);
2. /predict latency on a real face photo, one request at a time for ``--duration`` seconds:
   alone, then while two clients send a worst-case upload (``--concurrent``) at the same moment
   every ``--period`` seconds (or as soon as answered, when that takes longer), with the p95 of
   each step the service times.

    python bench/bench_detector_worst_case.py [--checkout DIR] [--uploads NAME,...]
        [--concurrent blank-20000x16] [--period 0.5] [--duration 10]
"""

from __future__ import annotations

import argparse
import importlib.util
import multiprocessing
import sys
import tempfile
import time
from collections.abc import Callable
from multiprocessing.queues import Queue
from multiprocessing.synchronize import Event
from pathlib import Path

import httpx
import numpy as np
import psutil

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from tests.hostile.detector_uploads import FACE, WORST_CASES  # noqa: E402
from tests.hostile.scrape import metric_samples  # noqa: E402
from tests.load.harness import RssSampler, stop_server  # noqa: E402

DEFAULT_FACE = ROOT.parent / "shared" / "data" / "celebs8" / FACE

SAMPLE_INTERVAL_S = 0.01
FACE_METRICS = ("celebxai_face_search_pixels", "celebxai_face_detection_seconds")


def face_search_totals(client: httpx.Client) -> dict[str, float]:
    """``{name_sum: ..., name_count: ...}`` of the face-search histograms now (empty: none)."""
    url = str(client.base_url).rstrip("/")
    return {
        sample.name: sample.value
        for family in FACE_METRICS
        for sample in metric_samples(url, family)
        if sample.name.endswith(("_sum", "_count"))
    }


def post(
    client: httpx.Client, data: bytes, content_type: str, name: str = "upload"
) -> httpx.Response:
    return client.post("/predict", files={"file": (name, data, content_type)})


def answer(response: httpx.Response) -> str:
    if response.status_code == 200:
        return "200"
    return f"{response.status_code} {response.json()['error']['code']}"


def one_upload(client: httpx.Client, pid: int, name: str, data: bytes, content_type: str) -> None:
    process = psutil.Process(pid)
    before_metrics = face_search_totals(client)
    before = process.memory_info().rss / 2**20
    with RssSampler(pid, SAMPLE_INTERVAL_S) as rss:
        started = time.perf_counter()
        response = post(client, data, content_type, name)
        elapsed = time.perf_counter() - started
    after = process.memory_info().rss / 2**20
    metrics = face_search_totals(client)
    if metrics:
        pixels, seconds = (
            metrics[f"{name}_sum"] - before_metrics[f"{name}_sum"] for name in FACE_METRICS
        )
        searched = f"searched {pixels:>9,.0f} px in {seconds:6.3f} s"
    else:
        searched = "searched n/a"
    peak = max(rss.peak_mib, after)
    print(
        f"  {name:15s} {len(data):>9,d} B  {answer(response):12s} {elapsed:7.2f} s  "
        f"RSS {before:6.0f} -> {after:6.0f} MiB (peak {peak:6.0f})  {searched}"
    )


def predict_latencies(
    client: httpx.Client, face: bytes, duration_s: float
) -> list[dict[str, float]]:
    """/predict on ``face`` one at a time for ``duration_s``: per request, the client's latency
    (``client_ms``) and the service's own ``timings`` (ms). Every answer must be 200."""
    latencies = []
    deadline = time.monotonic() + duration_s
    while time.monotonic() < deadline:
        started = time.perf_counter()
        response = post(client, face, "image/png", "face.png")
        elapsed = (time.perf_counter() - started) * 1000
        if response.status_code != 200:
            raise SystemExit(f"/predict on the face answered {answer(response)}")
        latencies.append({"client_ms": elapsed, **response.json()["timings"]})
    return latencies


def summary(latencies: list[dict[str, float]]) -> str:
    """p50/p95/max of the client's latency, and the p95 of each step the service timed."""
    client = [t["client_ms"] for t in latencies]
    p50, p95 = np.percentile(client, [50, 95])
    steps = ", ".join(
        f"{name[:-3]} {np.percentile([t[name] for t in latencies], 95):.0f}"
        for name in latencies[0]
        if name != "client_ms"
    )
    return (
        f"n={len(client):4d}  p50 {p50:7.1f} ms  p95 {p95:7.1f} ms  max {max(client):8.1f} ms"
        f"  (p95 per step, ms: {steps})"
    )


def attack(
    url: str,
    upload: tuple[bytes, str],
    timeout_s: float,
    start: float,
    period_s: float,
    stop: Event,
    answers: Queue,
) -> None:
    """Post ``upload`` at ``start`` (``time.time()``) and every ``period_s`` after (the next one
    as soon as the last is answered, when it took longer) until ``stop``; put each answer on
    ``answers``."""
    with httpx.Client(base_url=url, timeout=timeout_s) as client:
        beat = 0
        while not stop.is_set():
            time.sleep(max(0.0, start + beat * period_s - time.time()))
            try:
                answers.put(answer(post(client, *upload)))
            except httpx.TimeoutException:
                answers.put("timeout")
            beat = max(beat + 1, int((time.time() - start) / period_s))


def under_attack(
    url: str,
    client: httpx.Client,
    face: bytes,
    upload: tuple[bytes, str],
    duration_s: float,
    period_s: float,
    timeout_s: float,
) -> tuple[list[dict[str, float]], list[str]]:
    """/predict latencies while two clients (processes of their own, so that they do not slow
    this one's timing) post ``upload`` at the same moments, every ``period_s``; and their
    answers."""
    context = multiprocessing.get_context("spawn")
    stop, answers = context.Event(), context.Queue()
    start = time.time() + 2.0  # once both are spawned
    arguments = (url, upload, timeout_s, start, period_s, stop, answers)
    attackers = [context.Process(target=attack, args=arguments) for _ in range(2)]
    for process in attackers:
        process.start()
    time.sleep(max(0.0, start - time.time()))
    try:
        latencies = predict_latencies(client, face, duration_s)
        return latencies, drain(answers, attackers, stop, timeout_s)
    finally:
        for process in attackers:
            process.kill()


def drain(answers: Queue, attackers: list, stop: Event, timeout_s: float) -> list[str]:
    """Stop the attackers and collect every answer they got."""
    stop.set()
    collected = []
    deadline = time.monotonic() + timeout_s
    while any(p.is_alive() for p in attackers) and time.monotonic() < deadline:
        while not answers.empty():
            collected.append(answers.get())
        time.sleep(0.05)
    while not answers.empty():
        collected.append(answers.get())
    return collected


def checkout_launcher(checkout: Path) -> Callable:
    """``launch`` of ``checkout``'s ``tests/hostile/conftest.py``: it starts ``python -m service``
    in that checkout, so an older commit's worktree serves its own code."""
    conftest = checkout / "tests" / "hostile" / "conftest.py"
    spec = importlib.util.spec_from_file_location("checkout_conftest", conftest)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up there
    spec.loader.exec_module(module)
    return module.launch


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--checkout",
        type=Path,
        default=ROOT,
        help="the checkout whose service to start (default: this one)",
    )
    parser.add_argument(
        "--uploads", default=None, help="comma-separated worst cases to send alone (default: all)"
    )
    parser.add_argument(
        "--concurrent",
        default="blank-20000x16",
        help="the worst case two clients send while /predict is timed (default: %(default)s)",
    )
    parser.add_argument(
        "--duration",
        type=float,
        default=10.0,
        help="seconds of /predict timing, alone and under attack (default: %(default)s)",
    )
    parser.add_argument(
        "--period",
        type=float,
        default=0.5,
        help="seconds between two worst-case uploads sent at once (default: %(default)s)",
    )
    parser.add_argument(
        "--face",
        type=Path,
        default=DEFAULT_FACE,
        help="the face photo /predict is timed on (default: %(default)s)",
    )
    parser.add_argument(
        "--timeout",
        type=float,
        default=300.0,
        help="client timeout per request, seconds (default: %(default)s)",
    )
    args = parser.parse_args()

    launch = checkout_launcher(args.checkout.resolve())
    names = args.uploads.split(",") if args.uploads else list(WORST_CASES)
    unknown = sorted(set(names + [args.concurrent]) - set(WORST_CASES))
    if unknown:
        raise SystemExit(f"unknown upload(s) {unknown}; valid: {sorted(WORST_CASES)}")
    uploads = {name: (build(), content_type) for name, (build, content_type) in WORST_CASES.items()}
    face = args.face.read_bytes()

    with tempfile.TemporaryDirectory() as logs:
        service = launch(Path(logs))
        try:
            print(
                f"service from {args.checkout.resolve()} on {service.url}, "
                f"{psutil.cpu_count()} cores, load average {psutil.getloadavg()[0]:.1f}"
            )
            with httpx.Client(base_url=service.url, timeout=args.timeout) as client:
                post(client, face, "image/png")  # warm up
                print("each worst case alone:")
                for name in names:
                    one_upload(client, service.process.pid, name, *uploads[name])
                print(f"/predict on {args.face.name}, one request at a time:")
                alone = predict_latencies(client, face, args.duration)
                print(f"  alone: {summary(alone)}")
                latencies, answers = under_attack(
                    service.url,
                    client,
                    face,
                    uploads[args.concurrent],
                    args.duration,
                    args.period,
                    args.timeout,
                )
                attack_name = f"two {args.concurrent} at once every {args.period:g} s"
                print(f"  {attack_name}: {summary(latencies)}")
                counts = {a: answers.count(a) for a in sorted(set(answers))}
                rss = service.rss_mib()
                print(f"  their answers meanwhile: {counts}; server RSS now {rss:.0f} MiB")
        finally:
            stop_server(service.process)


if __name__ == "__main__":
    main()
