"""One long explanation as a job, watched live, and what cancelling one costs.

Starts the service as the README does (``python -m service`` on a free port, through
tests/load/harness.py's ``start_server``), then:

1. ``POST /jobs/lime?num_samples=--samples`` (1000) on a test-split face and reads
   ``GET /jobs/{id}/events`` as it comes: every event with its time since the POST, state,
   progress, estimated remaining time and whether it carried a partial map; then the final
   answer (label, the map's strongest cells), the overlay written to ``--out``, and whether the
   map equals the synchronous ``POST /explain/lime`` answer with the same seed;
2. another LIME job of ``--cancel-samples`` (2000) samples, deleted once it runs: the forward
   passes the service ran after the DELETE (``celebxai_explanation_batches_total``), the
   server's CPU seconds from the DELETE until the job says ``cancelled`` and in the second
   after, and how long the cancel took.

    python bench/bench_jobs.py [--samples 1000] [--cancel-samples 2000] [--out DIR]
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

import httpx
import numpy as np
import psutil
from _common import ROOT, add_bundle_args, machine_load, split_items

sys.path.insert(0, str(ROOT))
from tests.load.harness import free_port, start_server, stop_server  # noqa: E402

BATCHES = "celebxai_explanation_batches_total"


def main() -> None:
    parser = add_bundle_args(argparse.ArgumentParser(description=__doc__.split("\n\n")[0]))
    parser.add_argument("--samples", type=int, default=1000)
    parser.add_argument("--cancel-samples", type=int, default=2000)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "results")
    args = parser.parse_args()
    relative, _ = split_items(args.model)[0]
    face = (args.data / "celebs8" / relative).read_bytes()
    port = free_port()
    print(f"before: {machine_load({os.getpid()})}")
    with tempfile.TemporaryDirectory() as logs:
        server = start_server(args.model, port, Path(logs) / "service.log")
        try:
            url = f"http://127.0.0.1:{port}"
            timeline(url, face, args)
            cancel(url, face, args, psutil.Process(server.pid))
        finally:
            stop_server(server)
            print(f"\nwhile the service was up: {machine_load({os.getpid(), server.pid})}")


def timeline(url: str, face: bytes, args: argparse.Namespace) -> None:
    params = f"num_samples={args.samples}&seed={args.seed}&detect=false"
    files = {"file": ("face.png", face, "image/png")}
    posted = time.perf_counter()
    # the job renders the overlay it is asked for, as the synchronous call would
    started = httpx.post(f"{url}/jobs/lime?{params}&format=overlay", files=files, timeout=60)
    started.raise_for_status()
    job = started.json()
    print(f"\nLIME job, {args.samples} samples: 202 in {since(posted)} s, id {job['id']}")
    print(f"{'t (s)':>7} {'state':>9} {'progress':>9} {'remaining (s)':>14} {'map':>4}")
    with httpx.stream("GET", f"{url}/jobs/{job['id']}/events", timeout=600) as events:
        for line in events.iter_lines():
            if not line.startswith("data:"):
                continue
            event = json.loads(line.removeprefix("data:"))
            remaining = event["remaining_s"]
            print(
                f"{since(posted):>7} {event['state']:>9} {event['progress']:>9.3f} "
                f"{'-' if remaining is None else f'{remaining:.2f}':>14} "
                f"{'yes' if 'heatmap' in event else 'no':>4}"
            )
    result = httpx.get(f"{url}/jobs/{job['id']}").json()["result"]
    values = np.asarray(result["heatmap"]["values"])
    rows, cols = np.unravel_index(np.argsort(values, axis=None)[-3:][::-1], values.shape)
    top = [(int(row), int(col)) for row, col in zip(rows, cols, strict=True)]
    print(
        f"final: {result['label']} p={result['probability']:.3f}, map {values.shape[1]}x"
        f"{values.shape[0]}, strongest cells (row, col) {top}"
    )
    args.out.mkdir(parents=True, exist_ok=True)
    overlay = httpx.get(f"{url}/jobs/{job['id']}/result?format=overlay").content
    (args.out / "job_lime_overlay.png").write_bytes(overlay)
    sync = httpx.post(f"{url}/explain/lime?{params}", files=files, timeout=600).json()
    same = sync["heatmap"]["values"] == result["heatmap"]["values"]
    print(f"overlay: {args.out / 'job_lime_overlay.png'}; equals the synchronous map: {same}")


def cancel(url: str, face: bytes, args: argparse.Namespace, server: psutil.Process) -> None:
    params = f"num_samples={args.cancel_samples}&seed={args.seed + 1}&detect=false"
    files = {"file": ("face.png", face, "image/png")}
    job_id = httpx.post(f"{url}/jobs/lime?{params}", files=files, timeout=60).json()["id"]
    while httpx.get(f"{url}/jobs/{job_id}").json()["progress"] < 0.05:
        time.sleep(0.05)
    before = batches(url)
    cpu = cpu_seconds(server)
    deleted = time.perf_counter()
    httpx.delete(f"{url}/jobs/{job_id}").raise_for_status()
    while (status := httpx.get(f"{url}/jobs/{job_id}").json())["state"] != "cancelled":
        time.sleep(0.01)
    stopped_s = time.perf_counter() - deleted
    cpu_to_stop = cpu_seconds(server) - cpu
    after = batches(url)
    time.sleep(1.0)
    cpu_after = cpu_seconds(server) - cpu - cpu_to_stop
    print(
        f"\ncancel: a {args.cancel_samples}-sample LIME job deleted at progress "
        f"{status['progress']:.3f}: cancelled {stopped_s:.3f} s later, "
        f"{after - before:g} forward passes after the DELETE (at most the one in flight), "
        f"{batches(url) - after:g} in the second after; server CPU {cpu_to_stop:.3f} s until "
        f"cancelled, {cpu_after:.3f} s in the second after"
    )


def batches(url: str) -> float:
    for line in httpx.get(f"{url}/metrics").text.splitlines():
        if line.startswith(BATCHES + " "):
            return float(line.split()[1])
    raise LookupError(f"{BATCHES} not in /metrics")


def cpu_seconds(process: psutil.Process) -> float:
    times = process.cpu_times()
    return times.user + times.system


def since(start: float) -> str:
    return f"{time.perf_counter() - start:.2f}"


if __name__ == "__main__":
    main()
