"""What clients that hang up still cost the server: CPU seconds after the disconnects.

Starts the service as the README does (``python -m service``, through ``launch`` of
tests/hostile/conftest.py, on a free port), then, one phase after the other:

- ``--lime`` (16) LIME requests with ``num_samples=1000`` on a real face crop, different seeds
  so the cache never answers;
- ``--maximize`` (4) ``/insight/maximize`` requests with ``steps=300``, different seeds;

each sent whole by a client that hangs up ``--hang-up-after`` (1) seconds later without reading
the answer. For each phase it prints the server's CPU seconds (psutil: user + system of the
process) from the hang-up until every request is accounted for in ``/metrics``, how long that
took, the ``/metrics`` counts by status, and the forward passes run before and after the
hang-up (where the service counts them: ``celebxai_explanation_batches_total``).

    python bench/bench_cancel.py [--lime 16] [--maximize 4] [--hang-up-after 1.0]

To compare with an earlier commit, run the same file from a ``git worktree`` of it (copy this
file and tests/hostile/hang_up.py there): the service started is the one of the tree the
script lies in.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from tests.hostile.conftest import ServiceProcess, launch  # noqa: E402
from tests.hostile.hang_up import (  # noqa: E402
    explanation_batches,
    request_counts,
    send_request,
    wait_for,
)
from tests.load.harness import stop_server  # noqa: E402

DEFAULT_DATA = ROOT.parent / "shared" / "data"
FACE = Path("celebs8") / "tom_hanks"
SETTLE_TIMEOUT_S = 600.0


def passes(url: str) -> int | None:
    try:
        return explanation_batches(url)
    except LookupError:  # a service that does not count them
        return None


def phase(
    service: ServiceProcess,
    name: str,
    endpoint: str,
    requests: list[tuple[str, str, dict[str, object], tuple[str, bytes] | None]],
    hang_up_after_s: float,
) -> None:
    counted_before = sum(request_counts(service.url, endpoint).values())
    passes_at_start = passes(service.url)
    sockets = [send_request(service.url, *request) for request in requests]
    time.sleep(hang_up_after_s)
    passes_before = passes(service.url)
    cpu_before = service.cpu_seconds()
    hung_up = time.perf_counter()
    for sock in sockets:
        sock.close()
    wait_for(
        lambda: (
            sum(request_counts(service.url, endpoint).values()) - counted_before >= len(requests)
        ),
        SETTLE_TIMEOUT_S,
        f"every {endpoint} request accounted for",
    )
    settle_s = time.perf_counter() - hung_up
    cpu_after = service.cpu_seconds() - cpu_before
    passes_after = passes(service.url)
    counts = request_counts(service.url, endpoint)
    ran = (
        "n/a"
        if passes_before is None or passes_at_start is None or passes_after is None
        else f"{passes_before - passes_at_start}/{passes_after - passes_before}"
    )
    by_status = ", ".join(f"{status}: {count}" for status, count in sorted(counts.items()))
    print(f"{name:<34} {cpu_after:>8.1f} {settle_s:>8.1f} {ran:>20}   {by_status}", flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--data", type=Path, default=DEFAULT_DATA, help="default ../shared/data")
    parser.add_argument("--lime", type=int, default=16, help="LIME requests (default 16)")
    parser.add_argument("--maximize", type=int, default=4, help="maximize requests (default 4)")
    parser.add_argument(
        "--hang-up-after", type=float, default=1.0, help="seconds before hanging up (default 1)"
    )
    args = parser.parse_args()

    faces = sorted((args.data / FACE).glob("*.png"))
    if not faces:
        parser.error(f"no face photos in {args.data / FACE} (give --data)")
    face = faces[0].read_bytes()
    lime = [
        ("POST", "/lime", {"num_samples": 1000, "seed": seed, "detect": "false"}, ("f.png", face))
        for seed in range(args.lime)
    ]
    maximize = [
        ("GET", "/insight/maximize", {"class": "tom_hanks", "steps": 300, "seed": seed}, None)
        for seed in range(args.maximize)
    ]
    with tempfile.TemporaryDirectory() as logs:
        service = launch(Path(logs))
        try:
            print(f"service: {ROOT} (python -m service, default settings)")
            print(f"clients hang up {args.hang_up_after:.1f} s after sending; /metrics by status")
            print(
                f"{'phase':<34} {'CPU s':>8} {'settle s':>8} {'passes before/after':>20}   statuses"
            )
            phase(
                service,
                f"{args.lime} x /lime num_samples=1000",
                "/lime",
                lime,
                args.hang_up_after,
            )
            phase(
                service,
                f"{args.maximize} x /insight/maximize steps=300",
                "/insight/maximize",
                maximize,
                args.hang_up_after,
            )
        finally:
            stop_server(service.process)


if __name__ == "__main__":
    main()
