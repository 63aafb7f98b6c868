"""What queued jobs cost interactive calls, and what one request may cost.

``latency`` (the default): starts the service as the README does (``python -m service`` on a free
port, through tests/load/harness.py's ``start_server``, with two API keys so that 16 jobs fit the
per-key limit), then times ``--requests`` (5) ``POST /explain/gradient`` and ``POST /predict``,
one at a time, each on a different test-split photo (no cache hit), first on the idle service
and then beside ``--jobs`` (16) LIME jobs of ``--samples`` (2000: 64 forward passes each) made
at once, so that two run and the rest wait. It prints each call's p50 and largest latency both
ways, and how many jobs were queued and running at the end; then every job is deleted.

``costs``: in this process, each explanation method on one face at its default and at its most
expensive parameters: the forward passes it plans (``Explainer.planned_passes``; the unit of
``max_passes_per_request``) and the CPU seconds and wall seconds it took (the table of
docs/explanations.md).

    python bench/bench_fair_share.py [latency] [--jobs 16] [--samples 2000] [--requests 5]
        [--root CHECKOUT]
    python bench/bench_fair_share.py costs [--threads 2]

``--root`` runs the service of another checkout (``git worktree add /tmp/before <commit>``) with
this bench, for the figures before and after a change.
"""

from __future__ import annotations

import argparse
import io
import os
import sys
import tempfile
import time
from pathlib import Path

import httpx
import numpy as np
from _common import ROOT, add_bundle_args, machine_load, split_items
from PIL import Image

sys.path.insert(0, str(ROOT))
from service.bundle.checks import load_twin  # noqa: E402
from service.bundle.format import read_meta  # noqa: E402
from service.bundle.preprocess import Preprocessor  # noqa: E402
from service.explain import EXPLAINERS, ModelHandle  # noqa: E402
from service.explain.base import MethodCall  # noqa: E402
from service.inference.engine import create_session  # noqa: E402
from tests.load.harness import free_port, start_server, stop_server  # noqa: E402

KEYS = ("bench-a", "bench-b")
INTERACTIVE = ("/explain/gradient", "/predict")
# Each method at its most expensive parameters (docs/explanations.md, "What one request may cost").
MAXIMUM: dict[str, dict[str, object]] = {
    "gradient": {},
    "gradcam": {},
    "smoothgrad": {"samples": 64},
    "integrated_gradients": {"steps": 256},
    "occlusion": {"window": 4, "stride": 4, "strategy": "exhaustive"},
    "lime": {"num_samples": 2000},
    "rise": {"num_masks": 4000},
}


def main() -> None:
    parser = add_bundle_args(argparse.ArgumentParser(description=__doc__.split("\n\n")[0]))
    parser.add_argument("part", nargs="?", choices=("latency", "costs"), default="latency")
    parser.add_argument("--jobs", type=int, default=16, help="LIME jobs queued (default 16)")
    parser.add_argument(
        "--samples", type=int, default=2000, help="LIME samples per job (default 2000)"
    )
    parser.add_argument(
        "--requests", type=int, default=5, help="timed calls per endpoint and phase (default 5)"
    )
    parser.add_argument(
        "--threads", type=int, default=2, help="costs: ONNX Runtime threads (default 2)"
    )
    parser.add_argument(
        "--root", type=Path, default=ROOT, help="latency: the checkout whose service runs"
    )
    args = parser.parse_args()
    photos = [
        (args.data / "celebs8" / relative).read_bytes()
        for relative, _ in split_items(args.model)[: 1 + 4 * args.requests]
    ]
    if args.part == "costs":
        costs(args, photos[0])
    else:
        latency(args, photos)


def latency(args: argparse.Namespace, photos: list[bytes]) -> None:
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    print(f"before: {machine_load({os.getpid()})}")
    with tempfile.TemporaryDirectory() as logs:
        options = ["--api-key", ",".join(KEYS)]
        model = args.root / args.model.resolve().relative_to(ROOT)
        log = Path(logs) / "service.log"
        server = start_server(model, port, log, options, root=args.root.resolve())
        clients = [httpx.Client(base_url=url, headers={"X-API-Key": k}, timeout=600) for k in KEYS]
        try:
            face, rest = photos[0], photos[1:]
            for path in INTERACTIVE:  # first-call costs (thread pools, torch) are not latency
                post(clients[0], path, face)
            idle = timed(clients[0], rest[: 2 * args.requests])
            jobs = queue_jobs(clients, face, args)
            beside = timed(clients[0], rest[2 * args.requests :])
            states = [clients[i % 2].get(f"/jobs/{job}").json()["state"] for i, job in jobs]
            for i, job in jobs:
                clients[i % 2].delete(f"/jobs/{job}")
            print(
                f"\n{args.requests} calls per endpoint, one at a time, different photos; "
                f"beside {args.jobs} LIME jobs of {args.samples} samples "
                f"(at the end: {states.count('running')} running, "
                f"{states.count('queued')} queued, {states.count('done')} done)"
            )
            print(f"{'endpoint':<20} {'idle p50/max s':>16} {'beside jobs p50/max s':>24}")
            for path in INTERACTIVE:
                print(f"{path:<20} {summary(idle[path]):>16} {summary(beside[path]):>24}")
        finally:
            for client in clients:
                client.close()
            stop_server(server)
            print(f"\nwhile the service was up: {machine_load({os.getpid(), server.pid})}")


def post(client: httpx.Client, path: str, photo: bytes) -> float:
    files = {"file": ("face.png", photo, "image/png")}
    started = time.perf_counter()
    response = client.post(f"{path}?detect=false", files=files)
    seconds = time.perf_counter() - started
    if response.status_code != 200:
        raise SystemExit(f"{path} answered {response.status_code}: {response.text}")
    return seconds


def timed(client: httpx.Client, photos: list[bytes]) -> dict[str, list[float]]:
    """Each interactive endpoint in turn, one photo each, one call at a time."""
    seconds: dict[str, list[float]] = {path: [] for path in INTERACTIVE}
    for index, photo in enumerate(photos):
        path = INTERACTIVE[index % len(INTERACTIVE)]
        seconds[path].append(post(client, path, photo))
    return seconds


def queue_jobs(
    clients: list[httpx.Client], face: bytes, args: argparse.Namespace
) -> list[tuple[int, str]]:
    """``--jobs`` LIME jobs over the two keys; returns (key index, id) once two run."""
    jobs = []
    for index in range(args.jobs):
        files = {"file": ("face.png", face, "image/png")}
        query = f"num_samples={args.samples}&seed={index}&detect=false"
        response = clients[index % 2].post(f"/jobs/lime?{query}", files=files)
        if response.status_code != 202:
            raise SystemExit(f"job {index} answered {response.status_code}: {response.text}")
        jobs.append((index % 2, response.json()["id"]))
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        states = [clients[i].get(f"/jobs/{job}").json()["state"] for i, job in jobs]
        if states.count("running") >= min(2, len(jobs)):
            return jobs
        time.sleep(0.2)
    raise SystemExit("the jobs never started")


def summary(seconds: list[float]) -> str:
    return f"{np.median(seconds):.3f}/{max(seconds):.3f}"


def costs(args: argparse.Namespace, photo_bytes: bytes) -> None:
    meta = read_meta(args.model)
    session = create_session(args.model / "model.onnx", "cpu", args.threads)

    def forward(batch: np.ndarray) -> np.ndarray:
        return session.run(["logits"], {"input": batch})[0]

    handle = ModelHandle(forward, load_twin(args.model), meta.gradcam_layer)
    x = Preprocessor(meta.input)(Image.open(io.BytesIO(photo_bytes)).convert("RGB"))
    side = (int(x.shape[1]), int(x.shape[2]))
    print(f"one test-split face, {args.threads} ONNX Runtime threads; {machine_load(set())}")
    print(f"{'method':<22} {'parameters':<8} {'passes':>6} {'CPU s':>7} {'wall s':>7}")
    for name, explainer in EXPLAINERS.items():
        for label, values in (("default", {}), ("maximum", MAXIMUM[name])):
            call = MethodCall.of(explainer, values)
            cpu, wall = time.process_time(), time.perf_counter()
            explainer(handle).run(x, None, call.params)
            print(
                f"{name:<22} {label:<8} {call.planned_passes(side):>6} "
                f"{time.process_time() - cpu:>7.2f} {time.perf_counter() - wall:>7.2f}",
                flush=True,
            )


if __name__ == "__main__":
    main()
