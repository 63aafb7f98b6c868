"""Batching inside a Ray Serve replica: Ray's ``@serve.batch`` against the service's batcher.

The ``Predict`` deployment of ``python -m service --ray`` batches at the model with the
service's own ``DynamicBatcher`` (``Engine.submit``). This benchmark measures that choice against
Ray Serve's ``@serve.batch`` with nothing else in the way, in one run on a local Ray instance it
starts and stops (2 CPUs, no HTTP proxy), one replica of each:

- ``serve.batch``: ``predict`` is decorated ``@serve.batch`` with the service's max_batch_size
  and batch_timeout_ms (32, 4 ms); it stacks the inputs and runs the ONNX session once per
  batch (``Engine.run_rows``: the engine serves only as the session's wrapper) on a one-thread
  executor, as the engine does;
- ``serve.batch-sync``: the same, with the model run in the batch handler itself, on the
  replica's event loop (the pattern of Ray's documentation);
- ``DynamicBatcher``: a started ``service.inference.engine.Engine`` with the same settings;
  ``predict`` returns ``await engine.submit(x)``.

Each replica runs ONNX Runtime with ``--threads`` (1) intra-op threads and reserves ``--cpus``
(0.5, so that the three fit in the instance's 2; Ray does not enforce it: the thread count is
what bounds a replica's model runs), and allows the service's
``ray_predict_max_ongoing_requests`` (64) requests at once, so that batches can form. The inputs
are the bundle's test-split faces (``split.json``) through the bundle's ``Preprocessor``:
``(3, H, W)`` float32 arrays, sent through the deployment handles from this driver with a fixed
number of requests in flight (``--concurrency``), each level run for ``--warmup`` then
``--duration`` seconds per mechanism, the mechanisms taking turns at going first.

Per mechanism and concurrency it prints the throughput, p50 and p95 latency seen by the driver,
the mean batch size and model run per batch (each replica counts its batches), and the CPU
seconds per request of the replica process (all its threads: Ray's receiving and sending
included) and of the driver (Ray's handle routing and serialisation). A full run takes about
four minutes:

    python bench/bench_ray_batching.py [--duration 15] [--concurrency 1 8 32 64] [--threads 1]

The driver, the replicas and Ray's own processes share the machine's cores: compare the rows of
one run, not runs of different machines or loads.

What it showed (2 cores shared with other work, load average 3-5): at 1 request in flight the
three are alike (~30 req/s, p50 33 ms). From 8 in flight on, ``serve.batch`` runs batches of
1-2: Ray collects the next batch while the previous one runs, so its 4 ms window closes long
before the model is free; its throughput stops growing (39-41 req/s in the first run) at about
24 ms of replica CPU per request. The ``DynamicBatcher`` collects only once the model is free,
taking what queued meanwhile (batches of 4 at 8 in flight, 16 at 32, 32 at 64), at about 19 ms
of replica CPU per request: 14-20 % more throughput and a lower p95 at 8 and 32 in flight; at 64
one run showed no gain (38.4 against 39.1 req/s), a second one +29 % (36.3 against 28.1).
``serve.batch-sync`` forms batches much as the ``DynamicBatcher`` does, most likely because its
blocked event loop holds new requests back until the model is free.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import ray
from _common import add_bundle_args
from PIL import Image
from ray import serve
from ray.serve.config import ProxyLocation
from ray.serve.handle import DeploymentHandle

from service.bundle.format import ONNX_FILE, read_meta
from service.bundle.preprocess import Preprocessor
from service.inference.engine import Engine, create_session
from service.settings import Settings

DEFAULTS = Settings()
MAX_BATCH_SIZE = DEFAULTS.max_batch_size
BATCH_TIMEOUT_S = DEFAULTS.batch_timeout_ms / 1000
MAX_ONGOING_REQUESTS = DEFAULTS.ray_predict_max_ongoing_requests
SERVE_BATCH = "serve.batch"
SERVE_BATCH_SYNC = "serve.batch-sync"
DYNAMIC_BATCHER = "DynamicBatcher"


def get_args_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    add_bundle_args(parser)
    parser.add_argument(
        "--concurrency",
        type=int,
        nargs="+",
        default=[1, 8, 32, 64],
        help="requests in flight (default: 1 8 32 64)",
    )
    parser.add_argument(
        "--duration", type=float, default=15.0, help="seconds measured per level (default: 15)"
    )
    parser.add_argument(
        "--warmup", type=float, default=2.0, help="seconds of unmeasured load first (default: 2)"
    )
    parser.add_argument(
        "--threads", type=int, default=1, help="ONNX Runtime intra-op threads (default: 1)"
    )
    parser.add_argument(
        "--cpus",
        type=float,
        default=0.5,
        help="CPUs Ray reserves per replica (default: 0.5, so that the three fit in 2)",
    )
    return parser


def test_inputs(bundle: Path, data: Path) -> list[np.ndarray]:
    """The bundle's test-split faces, preprocessed as the bundle says."""
    split = json.loads((bundle / "split.json").read_text())
    preprocess = Preprocessor(read_meta(bundle).input)
    inputs = []
    for relative, _label in split["splits"]["test"]:
        with Image.open(data / "celebs8" / relative) as image:
            inputs.append(preprocess(image.convert("RGB")))
    return inputs


@dataclass
class Counters:
    """What a replica did so far; the driver takes differences over a measured window."""

    batches: int = 0
    items: int = 0
    model_s: float = 0.0

    def count(self, size: int, model_s: float) -> None:
        self.batches += 1
        self.items += size
        self.model_s += model_s

    def snapshot(self) -> dict[str, float]:
        return {
            "batches": self.batches,
            "items": self.items,
            "model_s": self.model_s,
            "cpu_s": time.process_time(),  # the replica process, every thread
        }


def _engine(bundle: Path, threads: int, counters: Counters) -> Engine:
    """The service's engine on the bundle's ONNX graph, warmed up; its batches are counted."""
    engine = Engine(
        create_session(bundle / ONNX_FILE, "cpu", threads),
        max_batch_size=MAX_BATCH_SIZE,
        batch_timeout_s=BATCH_TIMEOUT_S,
        observer=lambda size, model_s, _waited_s: counters.count(size, model_s),
    )
    example = np.zeros(engine.session.get_inputs()[0].shape[1:], dtype=np.float32)
    engine.warm_up(example)
    return engine


class ServeBatchReplica:
    """``@serve.batch`` with the model off the event loop, as the engine runs it."""

    def __init__(self, bundle: Path, threads: int) -> None:
        self.counters = Counters()
        # not started: only its session and run_rows (its batcher's observer never runs)
        self.engine = _engine(bundle, threads, self.counters)
        self.executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="inference")

    @serve.batch(max_batch_size=MAX_BATCH_SIZE, batch_wait_timeout_s=BATCH_TIMEOUT_S)
    async def predict(self, items: list[np.ndarray]) -> list[np.ndarray]:
        started = time.perf_counter()
        loop = asyncio.get_running_loop()
        rows = await loop.run_in_executor(self.executor, self.engine.run_rows, np.stack(items))
        self.counters.count(len(items), time.perf_counter() - started)
        return list(rows)

    async def stats(self) -> dict[str, float]:
        return self.counters.snapshot()


class ServeBatchSyncReplica(ServeBatchReplica):
    """Ray's documented pattern: the model runs in the batch handler, on the event loop."""

    @serve.batch(max_batch_size=MAX_BATCH_SIZE, batch_wait_timeout_s=BATCH_TIMEOUT_S)
    async def predict(self, items: list[np.ndarray]) -> list[np.ndarray]:
        started = time.perf_counter()
        rows = self.engine.run_rows(np.stack(items))
        self.counters.count(len(items), time.perf_counter() - started)
        return list(rows)


class DynamicBatcherReplica:
    """The service's ``Predict`` replica's batching: ``Engine.submit`` and its batcher."""

    # Ray Serve awaits an async constructor; the batcher starts on the loop that serves calls.
    async def __init__(self, bundle: Path, threads: int) -> None:  # type: ignore[misc]
        self.counters = Counters()
        self.engine = _engine(bundle, threads, self.counters)
        self.engine.start()

    async def predict(self, item: np.ndarray) -> np.ndarray:
        row, _stats = await self.engine.submit(item)
        return row

    async def stats(self) -> dict[str, float]:
        return self.counters.snapshot()


def deploy(bundle: Path, threads: int, cpus: float) -> dict[str, DeploymentHandle]:
    options: dict[str, Any] = {
        "num_replicas": 1,
        "max_ongoing_requests": MAX_ONGOING_REQUESTS,
        "ray_actor_options": {"num_cpus": cpus},
    }
    replicas = {
        SERVE_BATCH: ServeBatchReplica,
        SERVE_BATCH_SYNC: ServeBatchSyncReplica,
        DYNAMIC_BATCHER: DynamicBatcherReplica,
    }
    handles = {}
    for name, replica in replicas.items():
        app_name = name.replace(".", "_")
        app = serve.deployment(name=app_name, **options)(replica)
        handles[name] = serve.run(app.bind(bundle, threads), name=app_name, route_prefix=None)
    return handles


@dataclass
class Row:
    mechanism: str
    concurrency: int
    throughput: float
    p50_ms: float
    p95_ms: float
    mean_batch: float
    model_ms_per_batch: float
    replica_cpu_ms: float
    driver_cpu_ms: float


async def measure(
    mechanism: str,
    handle: DeploymentHandle,
    inputs: list[np.ndarray],
    concurrency: int,
    warmup: float,
    duration: float,
) -> Row:
    """``concurrency`` requests in flight for ``warmup`` + ``duration`` seconds; figures over
    the requests that finished in the measured window."""
    start = time.perf_counter()
    window = (start + warmup, start + warmup + duration)
    latencies: list[float] = []

    async def client(offset: int) -> None:
        index = offset
        while True:
            sent = time.perf_counter()
            if sent >= window[1]:
                return
            await handle.predict.remote(inputs[index % len(inputs)])
            done = time.perf_counter()
            if window[0] <= sent and done <= window[1]:
                latencies.append(done - sent)
            index += concurrency

    async def readings() -> tuple[dict[str, float], float, dict[str, float], float]:
        await asyncio.sleep(window[0] - time.perf_counter())
        before, driver_before = await handle.stats.remote(), time.process_time()
        await asyncio.sleep(window[1] - time.perf_counter())
        after, driver_after = await handle.stats.remote(), time.process_time()
        return before, driver_before, after, driver_after

    reading = asyncio.create_task(readings())
    await asyncio.gather(*(client(offset) for offset in range(concurrency)))
    before, driver_before, after, driver_after = await reading
    done = after["items"] - before["items"]
    batches = max(after["batches"] - before["batches"], 1)
    per_request = 1000 / max(done, 1)
    ms = np.asarray(latencies) * 1000
    return Row(
        mechanism=mechanism,
        concurrency=concurrency,
        throughput=done / duration,
        p50_ms=float(np.percentile(ms, 50)) if len(ms) else float("nan"),
        p95_ms=float(np.percentile(ms, 95)) if len(ms) else float("nan"),
        mean_batch=done / batches,
        model_ms_per_batch=(after["model_s"] - before["model_s"]) * 1000 / batches,
        replica_cpu_ms=(after["cpu_s"] - before["cpu_s"]) * per_request,
        driver_cpu_ms=(driver_after - driver_before) * per_request,
    )


def print_table(rows: list[Row]) -> None:
    print(
        f"{'mechanism':<16} {'in flight':>9} {'req/s':>8} {'p50 ms':>8} {'p95 ms':>8} "
        f"{'mean batch':>10} {'model ms/batch':>14} {'replica CPU ms/req':>18} "
        f"{'driver CPU ms/req':>17}"
    )
    for row in sorted(rows, key=lambda row: (row.concurrency, row.mechanism)):
        print(
            f"{row.mechanism:<16} {row.concurrency:>9} {row.throughput:>8.1f} "
            f"{row.p50_ms:>8.1f} {row.p95_ms:>8.1f} {row.mean_batch:>10.1f} "
            f"{row.model_ms_per_batch:>14.1f} {row.replica_cpu_ms:>18.2f} "
            f"{row.driver_cpu_ms:>17.2f}"
        )


async def run_levels(
    handles: dict[str, DeploymentHandle], inputs: list[np.ndarray], args: argparse.Namespace
) -> list[Row]:
    rows = []
    order = [SERVE_BATCH, SERVE_BATCH_SYNC, DYNAMIC_BATCHER]
    for concurrency in args.concurrency:
        for mechanism in order:
            row = await measure(
                mechanism, handles[mechanism], inputs, concurrency, args.warmup, args.duration
            )
            print(
                f"  {mechanism} at {concurrency} in flight: {row.throughput:.1f} req/s",
                flush=True,
            )
            rows.append(row)
        order = order[1:] + order[:1]  # none always goes first
    return rows


def main() -> None:
    args = get_args_parser().parse_args()
    bundle = args.model.resolve()
    inputs = test_inputs(bundle, args.data)
    print(
        f"{len(inputs)} test-split faces of {bundle.name}, input {inputs[0].shape}; "
        f"max_batch_size {MAX_BATCH_SIZE}, batch timeout {BATCH_TIMEOUT_S * 1000:g} ms, "
        f"max_ongoing_requests {MAX_ONGOING_REQUESTS}; per replica {args.cpus:g} CPU, "
        f"{args.threads} ONNX Runtime thread(s); {os.cpu_count()} cores, "
        f"load average {os.getloadavg()[0]:.2f}",
        flush=True,
    )
    started = time.perf_counter()
    ray.init(address="local", num_cpus=2, include_dashboard=False, log_to_driver=False)
    try:
        serve.start(proxy_location=ProxyLocation.Disabled)
        handles = deploy(bundle, args.threads, args.cpus)
        print(f"Ray and the three replicas up in {time.perf_counter() - started:.1f} s", flush=True)
        rows = asyncio.run(run_levels(handles, inputs, args))
    finally:
        serve.shutdown()
        ray.shutdown()
    print(f"\nload average {os.getloadavg()[0]:.2f} after the run\n")
    print_table(rows)


if __name__ == "__main__":
    main()
