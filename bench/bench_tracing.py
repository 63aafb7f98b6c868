"""What traces cost /predict: its latency with tracing off, and on with each exporter.

One run starts ``python -m service`` once per mode, with the environment a user would set:

- ``off``: no OTEL_* variable (the API's no-op tracer);
- ``console``: ``OTEL_TRACES_EXPORTER=console`` (every span as JSON on the server's stdout, here
  its log file);
- ``otlp``: ``OTEL_TRACES_EXPORTER=otlp`` to a collector in this process
  (``tests/scaleout/otlp_collector.py``, which decodes every export).

Each mode serves ``--warmup`` requests, then ``--requests`` sequential ``/predict`` requests
(one client, keep-alive) cycling through real test photos; the run prints p50, p90 and mean
latency per mode, and the CPU and the machine's load.

    python bench/bench_tracing.py [--requests 300] [--warmup 30] [--images 40]
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import httpx
from _common import add_bundle_args, cpu_model, machine_load, split_items, spread

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from tests.load.harness import free_port, start_server, stop_server  # noqa: E402
from tests.scaleout.otlp_collector import running_collector  # noqa: E402

MODES = ("off", "console", "otlp")


def get_args_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    add_bundle_args(parser)
    parser.add_argument("--requests", type=int, default=300, help="timed requests (default: 300)")
    parser.add_argument("--warmup", type=int, default=30, help="untimed first (default: 30)")
    parser.add_argument("--images", type=int, default=40, help="photos cycled (default: 40)")
    return parser


def otel_environment(mode: str, endpoint: str) -> dict[str, str]:
    if mode == "console":
        return {"OTEL_TRACES_EXPORTER": "console"}
    if mode == "otlp":
        return {"OTEL_TRACES_EXPORTER": "otlp", "OTEL_EXPORTER_OTLP_ENDPOINT": endpoint}
    return {}


def measure(args: argparse.Namespace, mode: str, endpoint: str, photos: list[bytes]) -> list[float]:
    """Latencies (ms) of ``args.requests`` /predict requests to a service traced as ``mode``."""
    saved = {name: value for name, value in os.environ.items() if name.startswith("OTEL_")}
    for name in saved:
        del os.environ[name]
    os.environ.update(otel_environment(mode, endpoint))
    port = free_port()
    try:
        with tempfile.TemporaryDirectory() as folder:
            server = start_server(args.model, port, Path(folder) / f"{mode}.log")
            try:
                return timed_requests(f"http://127.0.0.1:{port}", args, photos)
            finally:
                stop_server(server)
    finally:
        for name in [name for name in os.environ if name.startswith("OTEL_")]:
            del os.environ[name]
        os.environ.update(saved)


def timed_requests(url: str, args: argparse.Namespace, photos: list[bytes]) -> list[float]:
    latencies = []
    with httpx.Client(base_url=url, timeout=60) as client:
        for index in range(args.warmup + args.requests):
            photo = photos[index % len(photos)]
            started = time.perf_counter()
            response = client.post("/predict", files={"file": ("face.png", photo, "image/png")})
            elapsed_ms = (time.perf_counter() - started) * 1000
            if response.status_code not in (200, 422):  # 422: a photo without a found face
                raise RuntimeError(f"/predict answered {response.status_code}: {response.text}")
            if index >= args.warmup:
                latencies.append(elapsed_ms)
    return latencies


def main(args: argparse.Namespace) -> None:
    items = spread(split_items(args.model), args.images)
    photos = [(args.data / "celebs8" / relative).read_bytes() for relative, _ in items]
    print(f"CPU: {cpu_model()} ({os.cpu_count()} cores); {machine_load({os.getpid()})}")
    with running_collector() as collector:
        for mode in MODES:
            latencies = measure(args, mode, collector.endpoint, photos)
            cuts = statistics.quantiles(latencies, n=10)
            print(
                f"{mode:>8}: p50 {statistics.median(latencies):6.2f} ms  p90 {cuts[8]:6.2f} ms  "
                f"mean {statistics.fmean(latencies):6.2f} ms  ({len(latencies)} requests)"
            )
        print(f"spans received by the OTLP collector: {len(collector.spans)}")
    print(f"after: {machine_load({os.getpid()})}")


if __name__ == "__main__":
    main(get_args_parser().parse_args())
