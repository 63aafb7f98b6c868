"""What the worst small uploads cost the service, and whether /predict keeps answering.

Starts ``python -m service`` exactly as the README does (``launch`` from the hostile tests: a
free port, the service's own defaults) from ``--root`` (default: this checkout; give a
``git worktree`` of an older commit to measure it before a change), then prints, for

1. ``--uploads`` (8) concurrent ``/predict`` uploads of a ``--side`` x ``--side`` (6000)
   single-colour PNG (~150 KB that decodes to 108 MB of RGB, within the 40-megapixel limit),
2. ``/saliency?method=gradient&detect=false`` on that upload with ``format=png`` and
   ``format=overlay``, one at a time,

the wall time, the server's RSS before, after and at its peak (sampled every 10 ms), and the p50
and p95 latency of ``/predict?detect=false`` on a real face crop sent one at a time alongside
(and idle).

    python bench/bench_decode_bounds.py [--root DIR] [--uploads 8] [--side 6000] [--max-decodes N]
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from tests.hostile import conftest as hostile  # noqa: E402
from tests.hostile.heavy_uploads import (  # noqa: E402
    flat_png,
    latencies_while,
    post_at_once,
    rss_peak,
)
from tests.load.harness import stop_server  # noqa: E402

FACE = Path("celebs8/tom_hanks")
DATA = ROOT.parent / "shared" / "data"


def get_args_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--root", type=Path, default=ROOT, help="checkout to serve (default: this one)"
    )
    parser.add_argument("--uploads", type=int, default=8, help="concurrent uploads (default 8)")
    parser.add_argument("--side", type=int, default=6000, help="PNG side in pixels (default 6000)")
    parser.add_argument("--data", type=Path, default=DATA, help=f"data folder (default {DATA})")
    parser.add_argument(
        "--max-decodes",
        type=int,
        default=None,
        help="CELEBXAI_MAX_DECODES for the service (default: its own, one per core); e.g. 8 "
        "lets all uploads decode at once, to see the budget's effect in one checkout",
    )
    return parser


def percentiles(latencies: list[float]) -> str:
    if not latencies:
        return "no /predict answered meanwhile"
    p50, p95 = np.percentile(latencies, [50, 95])
    return f"/predict alongside: n={len(latencies)} p50 {p50:.0f} ms, p95 {p95:.0f} ms"


def measure(service: hostile.ServiceProcess, label: str, work, face: bytes) -> None:
    before = service.rss_mib()
    started = time.perf_counter()
    with rss_peak(service.process.pid) as rss:
        statuses, latencies = latencies_while(work, f"{service.url}/predict?detect=false", face)
    seconds = time.perf_counter() - started
    after = service.rss_mib()
    print(
        f"{label}: {seconds:.2f} s, statuses {statuses}; RSS before {before:.0f} MiB, after "
        f"{after:.0f} MiB, peak {rss.peak_mib:.0f} MiB (+{rss.peak_mib - before:.0f}); "
        f"{percentiles(latencies)}",
        flush=True,
    )


def main(args: argparse.Namespace) -> None:
    face = sorted((args.data / FACE).glob("*.png"))[0].read_bytes()
    big = flat_png(args.side)
    print(
        f"upload: {args.side}x{args.side} single-colour PNG, {len(big) / 1024:.0f} KB; "
        f"serving {args.root}",
        flush=True,
    )
    hostile.ROOT = args.root.resolve()  # launch() starts the service from there
    with tempfile.TemporaryDirectory() as logs:
        env = {} if args.max_decodes is None else {"CELEBXAI_MAX_DECODES": str(args.max_decodes)}
        service = hostile.launch(Path(logs), env=env)
        try:
            measure(service, "idle", lambda: time.sleep(3.0), face)

            def concurrent() -> list[int]:
                responses = post_at_once(f"{service.url}/predict", big, args.uploads)
                return sorted(response.status_code for response in responses)

            measure(service, f"{args.uploads} concurrent /predict uploads", concurrent, face)
            for fmt in ("png", "overlay"):
                url = f"{service.url}/saliency?method=gradient&detect=false&format={fmt}"

                def render(url: str = url) -> list[int]:
                    return [response.status_code for response in post_at_once(url, big, 1)]

                measure(service, f"format={fmt}", render, face)
            print(f"final RSS {service.rss_mib():.0f} MiB", flush=True)
        finally:
            stop_server(service.process)


if __name__ == "__main__":
    main(get_args_parser().parse_args())
