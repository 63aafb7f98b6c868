"""Throughput of /predict over HTTP against the model's raw batched throughput.

One run prints:
1. raw ONNX Runtime throughput (images/s) for each batch size, and the best, with its CPU time
   per image;
2. /predict throughput, p50 and p95 latency at each concurrency level (default 1, 8, 32), with
   face detection (the default) and without (``detect=false``: the model path alone),
   measured over HTTP against a real uvicorn process started from ``python -m service``, and
   each throughput as a ratio to the best raw figure; the server's CPU time per request, and
   that less the raw CPU time per image: what a request costs beyond the model itself (HTTP,
   multipart, decoding, detection, preprocessing, JSON).

With ``--baseline DIR`` (a checkout of older code, e.g. a git worktree) its service runs every
level too, in the same run, right before the current one, so both see the same machine.

The load generator is a small keep-alive HTTP/1.1 client on raw asyncio streams with the
multipart requests built in advance, so that the client takes as little CPU as possible from the
server on the same machine. Real face photos from ../shared/data are cycled through.

    python bench/bench_predict.py [--duration 10] [--concurrency 1 8 32] [--threads 0]
                                  [--baseline /tmp/base]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import re
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import numpy as np
from _common import add_bundle_args

from service.bundle.format import ONNX_FILE, read_meta
from service.bundle.preprocess import Preprocessor
from service.inference.engine import create_session

ROOT = Path(__file__).resolve().parents[1]

BOUNDARY = "celebxai-bench-boundary"
BATCH_SIZE_PATTERN = re.compile(rb'"batch_size":(\d+)')


def get_args_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    add_bundle_args(parser)
    parser.add_argument(
        "--images", type=int, default=64, help="distinct photos to cycle (default: 64)"
    )
    parser.add_argument(
        "--threads",
        type=int,
        default=0,
        help="ONNX Runtime intra-op threads, raw and served alike (default: 0 = cores)",
    )
    parser.add_argument(
        "--batch-sizes",
        type=int,
        nargs="+",
        default=[1, 4, 8, 16, 32, 64],
        help="raw batch sizes to try (default: 1 4 8 16 32 64)",
    )
    parser.add_argument(
        "--raw-seconds", type=float, default=3.0, help="seconds per raw batch size (default: 3)"
    )
    parser.add_argument(
        "--concurrency",
        type=int,
        nargs="+",
        default=[1, 8, 32],
        help="HTTP concurrency levels (default: 1 8 32)",
    )
    parser.add_argument(
        "--duration",
        type=float,
        default=10.0,
        help="seconds measured per concurrency level (default: 10)",
    )
    parser.add_argument(
        "--warmup",
        type=float,
        default=2.0,
        help="seconds of unmeasured load before each level (default: 2)",
    )
    parser.add_argument(
        "--paths",
        nargs="+",
        default=["/predict", "/predict?detect=false"],
        help="request paths to load, each at every concurrency (default: /predict "
        "with face detection, then without: the model path alone)",
    )
    parser.add_argument(
        "--baseline",
        type=Path,
        default=None,
        help="a checkout of older code whose service is measured alongside, level by level "
        "(default: none)",
    )
    parser.add_argument(
        "--max-batch-size",
        type=int,
        default=32,
        help="server's dynamic batcher max batch (default: 32)",
    )
    parser.add_argument(
        "--batch-timeout-ms",
        type=float,
        default=4.0,
        help="server's dynamic batcher timeout (default: 4)",
    )
    return parser


def load_photos(data: Path, count: int) -> list[bytes]:
    paths = sorted((data / "celebs8").glob("*/*.png"))
    if not paths:
        raise SystemExit(f"no face photos under {data / 'celebs8'}; pass --data")
    step = max(1, len(paths) // count)
    return [path.read_bytes() for path in paths[::step][:count]]


def raw_throughput(
    args: argparse.Namespace,
    photos: list[bytes],
    batch_sizes: list[int],
    cpu_ms: dict[int, float] | None = None,
) -> dict[int, float]:
    """images/s of session.run for each batch size, on preprocessed real photos; the CPU ms per
    image of each batch size go into ``cpu_ms`` when given."""
    import io

    from PIL import Image

    meta = read_meta(args.model)
    preprocess = Preprocessor(meta.input)
    inputs = np.stack([preprocess(Image.open(io.BytesIO(p)).convert("RGB")) for p in photos])
    session = create_session(args.model / ONNX_FILE, "auto", args.threads)
    input_name = session.get_inputs()[0].name
    results = {}
    for batch_size in batch_sizes:
        batch = np.resize(inputs, (batch_size, *inputs.shape[1:]))
        session.run(None, {input_name: batch})  # warm-up
        images, started, cpu_started = 0, time.perf_counter(), time.process_time()
        while (elapsed := time.perf_counter() - started) < args.raw_seconds:
            session.run(None, {input_name: batch})
            images += batch_size
        cpu_ms_per_image = (time.process_time() - cpu_started) * 1000 / images
        results[batch_size] = images / elapsed
        if cpu_ms is not None:
            cpu_ms[batch_size] = cpu_ms_per_image
        print(
            f"  raw batch {batch_size:>3}: {results[batch_size]:8.1f} images/s "
            f"({cpu_ms_per_image:5.2f} CPU ms/image)",
            flush=True,
        )
    return results


def multipart_request(port: int, photo: bytes, path: str = "/predict") -> bytes:
    body = (
        (
            f"--{BOUNDARY}\r\n"
            'Content-Disposition: form-data; name="file"; filename="face.png"\r\n'
            "Content-Type: image/png\r\n\r\n"
        ).encode()
        + photo
        + f"\r\n--{BOUNDARY}--\r\n".encode()
    )
    head = (
        f"POST {path} HTTP/1.1\r\n"
        f"Host: 127.0.0.1:{port}\r\n"
        f"Content-Type: multipart/form-data; boundary={BOUNDARY}\r\n"
        f"Content-Length: {len(body)}\r\n\r\n"
    ).encode()
    return head + body


async def read_response(reader: asyncio.StreamReader) -> tuple[int, bytes]:
    head = await reader.readuntil(b"\r\n\r\n")
    status = int(head.split(b" ", 2)[1])
    length = int(re.search(rb"(?i)content-length:\s*(\d+)", head).group(1))
    return status, await reader.readexactly(length)


async def load_level(
    port: int, requests: list[bytes], concurrency: int, warmup: float, duration: float
) -> dict[str, float]:
    """Closed-loop load: ``concurrency`` connections, each sending its next request on reply."""
    start = time.perf_counter()
    measure_from, stop_at = start + warmup, start + warmup + duration
    latencies: list[float] = []
    batch_sizes: list[int] = []
    failures = completed = 0

    async def client(offset: int) -> None:
        nonlocal failures, completed
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        index = offset
        try:
            while (sent := time.perf_counter()) < stop_at:
                writer.write(requests[index % len(requests)])
                index += concurrency
                status, body = await read_response(reader)
                done = time.perf_counter()
                completed += 1
                if sent >= measure_from and done <= stop_at:
                    latencies.append(done - sent)
                    if status != 200:
                        failures += 1
                    elif match := BATCH_SIZE_PATTERN.search(body):
                        batch_sizes.append(int(match.group(1)))
        finally:
            writer.close()

    await asyncio.gather(*(client(i) for i in range(concurrency)))
    measured = np.array(latencies) * 1000
    nan = float("nan")  # no request both sent and answered within the measured window
    return {
        "throughput": len(latencies) / duration,
        "p50": float(np.percentile(measured, 50)) if latencies else nan,
        "p95": float(np.percentile(measured, 95)) if latencies else nan,
        "mean_batch": float(np.mean(batch_sizes)) if batch_sizes else 0.0,
        "failures": failures,
        "completed": completed,
    }


def process_cpu_seconds(pid: int) -> float:
    """User + system CPU time of process ``pid``, all threads (Linux /proc; NaN elsewhere)."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return float("nan")
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def start_server(args: argparse.Namespace, port: int, root: Path = ROOT) -> subprocess.Popen:
    """``python -m service`` of the code in ``root`` (its own copy of the bundle), ready."""
    model = args.model if root == ROOT else root / args.model.resolve().relative_to(ROOT)
    command = [
        sys.executable,
        "-m",
        "service",
        "--model",
        str(model),
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
        "--threads",
        str(args.threads),
        "--access-log",
        "false",
        "--log-level",
        "warning",
        "--max-batch-size",
        str(args.max_batch_size),
        "--batch-timeout-ms",
        str(args.batch_timeout_ms),
        "--max-in-flight",
        "1024",
    ]
    env = {k: v for k, v in os.environ.items() if not k.startswith("CELEBXAI_")}
    server = subprocess.Popen(command, cwd=root, env=env)
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        if server.poll() is not None:
            raise SystemExit(f"server exited with {server.returncode}")
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/readyz", timeout=2):
                return server
        except (urllib.error.URLError, ConnectionError):
            time.sleep(0.5)
    server.terminate()
    raise SystemExit("server did not become ready within 120 s")


def measure_level(
    server: subprocess.Popen,
    port: int,
    photos: list[bytes],
    path: str,
    concurrency: int,
    args: argparse.Namespace,
) -> tuple[dict[str, float], float]:
    """One load level on one server: the load's figures and the server's CPU ms per request
    (over every request of the level, warm-up included)."""
    requests = [multipart_request(port, photo, path) for photo in photos]
    cpu_before = process_cpu_seconds(server.pid)
    result = asyncio.run(load_level(port, requests, concurrency, args.warmup, args.duration))
    cpu_s = process_cpu_seconds(server.pid) - cpu_before
    return result, cpu_s * 1000 / max(result["completed"], 1)


def main(args: argparse.Namespace) -> None:
    photos = load_photos(args.data, args.images)
    print(
        f"model {args.model}, {len(photos)} photos, {os.cpu_count()} CPU cores, "
        f"threads={args.threads or 'auto'}, load average {os.getloadavg()[0]:.1f}",
        flush=True,
    )

    print("raw ONNX Runtime (session.run on preprocessed input):", flush=True)
    raw_cpu: dict[int, float] = {}
    raw = raw_throughput(args, photos, args.batch_sizes, raw_cpu)
    best_batch = max(raw, key=lambda size: raw[size])
    best = raw[best_batch]
    print(
        f"raw best: {best:.1f} images/s at batch {best_batch} "
        f"({raw_cpu[best_batch]:.2f} CPU ms/image)\n",
        flush=True,
    )

    services = {"new": ROOT} if args.baseline is None else {"old": args.baseline, "new": ROOT}
    servers: dict[str, tuple[subprocess.Popen, int]] = {}
    try:
        for name, root in services.items():
            port = free_port()
            servers[name] = (start_server(args, port, root.resolve()), port)
        for path in args.paths:
            print(
                f"POST {path} over HTTP (uvicorn, max batch {args.max_batch_size}, "
                f"batch timeout {args.batch_timeout_ms} ms, {args.duration:.0f} s per level):"
            )
            print(
                f"  {'code':>4} {'concurrency':>11} {'req/s':>8} {'ratio':>6} {'p50 ms':>8} "
                f"{'p95 ms':>8} {'batch':>6} {'errors':>6} {'server CPU ms/req':>18} "
                f"{'beyond model':>12}"
            )
            for concurrency in args.concurrency:
                for name, (server, port) in servers.items():
                    result, cpu_ms = measure_level(server, port, photos, path, concurrency, args)
                    print(
                        f"  {name:>4} {concurrency:>11} {result['throughput']:8.1f} "
                        f"{result['throughput'] / best:6.2f} "
                        f"{result['p50']:8.1f} {result['p95']:8.1f} {result['mean_batch']:6.1f} "
                        f"{result['failures']:>6} {cpu_ms:18.2f} "
                        f"{cpu_ms - raw_cpu[best_batch]:12.2f}",
                        flush=True,
                    )
    finally:
        for server, _ in servers.values():
            server.terminate()
            server.wait(timeout=30)
    # the machine may be shared: a second raw figure shows how much the conditions drifted
    print("\nraw ONNX Runtime again, after the HTTP runs (ratios above use the first figure):")
    raw_throughput(args, photos, [best_batch])
    print(f"load average {os.getloadavg()[0]:.1f}")


if __name__ == "__main__":
    main(get_args_parser().parse_args())
