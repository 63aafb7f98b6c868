"""Clients that send a request whole, then hang up without reading the answer, and what the
service's ``/metrics`` says about them afterwards (for tests/hostile/test_cancellation.py and
bench/bench_cancel.py).
"""

from __future__ import annotations

import socket
import time
import uuid
from collections import Counter
from collections.abc import Callable
from urllib.parse import urlencode, urlsplit

from .scrape import metric_samples

REQUESTS = "celebxai_http_requests"
EXPLANATION_BATCHES = "celebxai_explanation_batches"


def send_request(
    url: str,
    method: str,
    path: str,
    query: dict[str, object],
    upload: tuple[str, bytes] | None = None,
) -> socket.socket:
    """Send one whole HTTP/1.1 request (a multipart ``file`` when ``upload`` = (name, bytes))
    and return the open socket, answer unread: ``close()`` it to hang up."""
    target = urlsplit(url)
    body, headers = b"", [f"Host: {target.netloc}", "Connection: close"]
    if upload is not None:
        boundary = uuid.uuid4().hex
        name, data = upload
        body = (
            (
                f'--{boundary}\r\nContent-Disposition: form-data; name="file"; '
                f'filename="{name}"\r\nContent-Type: application/octet-stream\r\n\r\n'
            ).encode()
            + data
            + f"\r\n--{boundary}--\r\n".encode()
        )
        headers.append(f"Content-Type: multipart/form-data; boundary={boundary}")
    headers.append(f"Content-Length: {len(body)}")
    head = f"{method} {path}?{urlencode(query)} HTTP/1.1\r\n" + "\r\n".join(headers) + "\r\n\r\n"
    sock = socket.create_connection((target.hostname, target.port), timeout=10)
    sock.sendall(head.encode() + body)
    return sock


def status_of(sock: socket.socket, timeout_s: float = 0.0) -> int | None:
    """The status of an answer already waiting on ``sock`` (None if there is none yet)."""
    sock.settimeout(timeout_s or 1e-3)
    try:
        first = sock.recv(64)
    except (TimeoutError, BlockingIOError):
        return None
    return int(first.split(b" ", 2)[1]) if first.startswith(b"HTTP/") else None


def request_counts(url: str, endpoint: str) -> Counter[str]:
    """Requests answered on ``endpoint`` (a route template), by status."""
    counts: Counter[str] = Counter()
    for sample in metric_samples(url, REQUESTS):
        if sample.name == f"{REQUESTS}_total" and sample.labels["endpoint"] == endpoint:
            counts[sample.labels["status"]] += int(sample.value)
    return counts


def explanation_batches(url: str) -> int:
    """Forward passes the service has run for explanations and syntheses so far."""
    for sample in metric_samples(url, EXPLANATION_BATCHES):
        if sample.name == f"{EXPLANATION_BATCHES}_total":
            return int(sample.value)
    raise LookupError(f"{EXPLANATION_BATCHES}_total not in /metrics")


def wait_for(
    condition: Callable[[], bool], timeout_s: float, what: str, every_s: float = 0.2
) -> None:
    """Until ``condition()``, asked every ``every_s``; ``TimeoutError`` after ``timeout_s``."""
    deadline = time.monotonic() + timeout_s
    while not condition():
        if time.monotonic() > deadline:
            raise TimeoutError(f"not within {timeout_s:.0f} s: {what}")
        time.sleep(every_s)
