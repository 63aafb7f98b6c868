"""What ``/predict`` costs per bundle, measured on the service as users start it.

``python -m service --model <bundle> --port <free port>`` (the README's command plus those two
flags) runs as a subprocess from the repository root; once ``/readyz`` answers 200, a few
warm-up requests go first, then ``requests`` ``POST /predict`` calls, one at a time, each with a
real face photo (cycling through ``photos``). Latency is the client's wall time per call; CPU
per request is the server process's user + system time (``/proc/<pid>/stat``, every thread of
it) over the timed calls, divided by their number. The server is stopped afterwards (SIGTERM,
then SIGKILL after 30 s).
"""

from __future__ import annotations

import logging
import os
import socket
import statistics
import subprocess
import sys
import time
import urllib.error
import urllib.request
import uuid
from dataclasses import dataclass
from pathlib import Path

log = logging.getLogger(__name__)

ROOT = Path(__file__).resolve().parents[1]
READY_TIMEOUT_S = 600.0
WARM_UP = 3


@dataclass(frozen=True)
class PredictCost:
    """``/predict`` per request: client wall time (median, 90th percentile) and server CPU, ms."""

    requests: int
    median_ms: float
    p90_ms: float
    cpu_ms: float


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of process ``pid`` (all its threads), from ``/proc``."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    # after the command name: state is field 3, utime and stime are fields 14 and 15
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def multipart(path: Path) -> tuple[bytes, str]:
    """A ``multipart/form-data`` body with ``path`` as the field ``file``, and its content type."""
    boundary = uuid.uuid4().hex
    suffix = path.suffix.lower().lstrip(".")
    kind = {"jpg": "jpeg"}.get(suffix, suffix)
    head = (
        f"--{boundary}\r\n"
        f'Content-Disposition: form-data; name="file"; filename="{path.name}"\r\n'
        f"Content-Type: image/{kind}\r\n\r\n"
    )
    body = head.encode() + path.read_bytes() + f"\r\n--{boundary}--\r\n".encode()
    return body, f"multipart/form-data; boundary={boundary}"


def post_predict(base: str, photo: Path) -> float:
    """One ``POST /predict``; returns its wall time in ms (``RuntimeError`` unless 200)."""
    body, content_type = multipart(photo)
    request = urllib.request.Request(
        f"{base}/predict", data=body, headers={"Content-Type": content_type}, method="POST"
    )
    started = time.perf_counter()
    try:
        with urllib.request.urlopen(request, timeout=120) as response:
            response.read()
            status = response.status
    except urllib.error.HTTPError as error:
        raise RuntimeError(
            f"POST /predict answered {error.code}: {error.read()[:300]!r}"
        ) from error
    if status != 200:
        raise RuntimeError(f"POST /predict answered {status}")
    return (time.perf_counter() - started) * 1000


def _wait_ready(base: str, server: subprocess.Popen, log_path: Path) -> None:
    deadline = time.monotonic() + READY_TIMEOUT_S
    while time.monotonic() < deadline:
        if server.poll() is not None:
            raise RuntimeError(
                f"the service exited with {server.returncode} before it was ready; its log: "
                f"{log_path.read_text()[-2000:]}"
            )
        try:
            with urllib.request.urlopen(f"{base}/readyz", timeout=5) as response:
                if response.status == 200:
                    return
        except (urllib.error.URLError, OSError):
            pass
        time.sleep(1.0)
    raise RuntimeError(f"the service was not ready within {READY_TIMEOUT_S:.0f} s")


def measure_predict(
    bundle: Path, photos: list[Path], requests: int, log_dir: Path, env: dict | None = None
) -> PredictCost:
    """Start the service on ``bundle``, time ``requests`` ``/predict`` calls, stop it."""
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    log_dir.mkdir(parents=True, exist_ok=True)
    log_path = log_dir / f"service-{bundle.name}.log"
    command = [sys.executable, "-m", "service", "--model", str(bundle), "--port", str(port)]
    with log_path.open("w") as out:
        server = subprocess.Popen(
            command,
            cwd=ROOT,
            stdout=out,
            stderr=subprocess.STDOUT,
            env={**os.environ, **(env or {})},
        )
        try:
            _wait_ready(base, server, log_path)
            for i in range(WARM_UP):
                post_predict(base, photos[i % len(photos)])
            before = cpu_seconds(server.pid)
            times = [post_predict(base, photos[i % len(photos)]) for i in range(requests)]
            cpu = cpu_seconds(server.pid) - before
        finally:
            server.terminate()
            try:
                server.wait(timeout=30)
            except subprocess.TimeoutExpired:
                server.kill()
                server.wait()
    ordered = sorted(times)
    return PredictCost(
        requests=requests,
        median_ms=statistics.median(times),
        p90_ms=ordered[min(len(ordered) - 1, int(0.9 * len(ordered)))],
        cpu_ms=1000 * cpu / requests,
    )
