"""Latency of every image endpoint over HTTP with default parameters: p50 and p95 of N requests.

Starts ``python -m service`` on a free loopback port (as bench_predict.py does), then posts N
different test-split photos one at a time to each endpoint -- different photos, so that the
explanation cache never answers -- and prints the latency table.

    python bench/bench_endpoints.py [--requests 20] [--threads 0]
"""

from __future__ import annotations

import argparse
import json
import time
import urllib.request
import uuid
from pathlib import Path

import numpy as np
from bench_predict import DEFAULT_DATA, ROOT, free_port, start_server

ENDPOINTS = (
    "/predict",
    "/saliency",
    "/saliency?method=smoothgrad",
    "/saliency?method=integrated_gradients",
    "/saliency?method=gradcam",
    "/occlusion",
    "/lime",
)


def post(port: int, path: str, photo: bytes) -> int:
    boundary = uuid.uuid4().hex
    body = (
        (
            f'--{boundary}\r\nContent-Disposition: form-data; name="file"; filename="f.png"\r\n'
            f"Content-Type: image/png\r\n\r\n"
        ).encode()
        + photo
        + f"\r\n--{boundary}--\r\n".encode()
    )
    request = urllib.request.Request(
        f"http://127.0.0.1:{port}{path}",
        data=body,
        method="POST",
        headers={"Content-Type": f"multipart/form-data; boundary={boundary}"},
    )
    with urllib.request.urlopen(request, timeout=120) as response:
        response.read()
        return response.status


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--model", type=Path, default=ROOT / "models" / "celebs8")
    parser.add_argument("--data", type=Path, default=DEFAULT_DATA)
    parser.add_argument(
        "--requests", type=int, default=20, help="requests per endpoint (default 20)"
    )
    parser.add_argument(
        "--threads", type=int, default=0, help="service threads (default 0: one per core)"
    )
    args = parser.parse_args()
    args.max_batch_size, args.batch_timeout_ms = 32, 4.0

    split = json.loads((args.model / "split.json").read_text())["splits"]["test"]
    photos = [
        (args.data / "celebs8" / rel).read_bytes()
        for rel, _ in split[:: max(1, len(split) // args.requests)]
    ]
    photos = photos[: args.requests]
    port = free_port()
    server = start_server(args, port)
    try:
        print(
            f"{len(photos)} different test-split photos per endpoint, sequential, "
            "default parameters"
        )
        print(f"{'endpoint':<40} {'p50 ms':>8} {'p95 ms':>8}")
        for path in ENDPOINTS:
            post(port, path, photos[0])  # first-call costs (thread pools, torch) are not latency
            seconds = []
            for photo in photos:
                started = time.perf_counter()
                status = post(port, path, photo)
                seconds.append(time.perf_counter() - started)
                if status != 200:
                    raise SystemExit(f"{path} answered {status}")
            ms = np.array(seconds) * 1000
            print(f"{path:<40} {np.median(ms):8.1f} {np.percentile(ms, 95):8.1f}", flush=True)
    finally:
        server.terminate()
        server.wait(timeout=30)


if __name__ == "__main__":
    main()
