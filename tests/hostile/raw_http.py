"""Raw-socket HTTP/1.1 for clients no HTTP library would be: heads that never end, bodies
shorter than their Content-Length, uploads that stall, headers of any size.

``read_until_closed`` is how the tests bound time: it waits at most ``within`` seconds for the
server to answer and close, and fails when the connection is still open then.
"""

from __future__ import annotations

import json
import socket
from dataclasses import dataclass
from urllib.parse import urlsplit

from .scrape import metric_samples

BOUNDARY = "celebxai-raw-boundary"
CONNECTIONS_CLOSED = "celebxai_connections_closed"
CHUNK = 64 * 1024


@dataclass
class RawResponse:
    status: int | None  # None: closed without an answer
    headers: dict[str, str]
    body: bytes

    def json(self) -> dict:
        return json.loads(self.body)


def connect(url: str) -> socket.socket:
    target = urlsplit(url)
    return socket.create_connection((target.hostname, target.port), timeout=10)


def read_until_closed(sock: socket.socket, within: float) -> RawResponse:
    """Everything the server sends until it closes the connection, which it must do within
    ``within`` seconds (else ``AssertionError``)."""
    sock.settimeout(within)
    data = b""
    try:
        while chunk := sock.recv(65536):
            data += chunk
    except TimeoutError as exc:
        raise AssertionError(f"the server kept the connection open for {within} s") from exc
    except ConnectionResetError:
        pass  # closed with unread data of ours still in its buffer: closed all the same
    finally:
        sock.close()
    return parse_response(data)


def read_response(sock: socket.socket, timeout: float = 30) -> RawResponse:
    """One response with a Content-Length, leaving the connection open."""
    sock.settimeout(timeout)
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = sock.recv(65536)
        if not chunk:
            return parse_response(data)
        data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    length = int(parse_response(head + b"\r\n\r\n").headers.get("content-length", "0"))
    while len(body) < length:
        chunk = sock.recv(65536)
        if not chunk:
            break
        body += chunk
    return parse_response(head + b"\r\n\r\n" + body)


def parse_response(data: bytes) -> RawResponse:
    if not data:
        return RawResponse(None, {}, b"")
    head, _, body = data.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    headers = {}
    for line in lines[1:]:
        name, _, value = line.partition(":")
        headers[name.strip().lower()] = value.strip()
    return RawResponse(int(lines[0].split()[1]), headers, body)


def request_head(
    method: str, path: str, headers: dict[str, str] | None = None, close: bool = False
) -> bytes:
    lines = [f"{method} {path} HTTP/1.1", "Host: 127.0.0.1"]
    lines += [f"{name}: {value}" for name, value in (headers or {}).items()]
    if close:
        lines.append("Connection: close")
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")


def multipart(data: bytes, filename: str = "face.png") -> tuple[bytes, dict[str, str]]:
    """A multipart body with ``data`` as field ``file``, and its Content-Type/Length headers."""
    body = (
        (
            f"--{BOUNDARY}\r\n"
            f'Content-Disposition: form-data; name="file"; filename="{filename}"\r\n'
            "Content-Type: application/octet-stream\r\n\r\n"
        ).encode()
        + data
        + f"\r\n--{BOUNDARY}--\r\n".encode()
    )
    headers = {
        "Content-Type": f"multipart/form-data; boundary={BOUNDARY}",
        "Content-Length": str(len(body)),
    }
    return body, headers


def closed_connections(url: str) -> dict[str, float]:
    """``/metrics``: connections the server closed, by reason."""
    return {
        sample.labels["reason"]: sample.value
        for sample in metric_samples(url, CONNECTIONS_CLOSED)
        if sample.name.endswith("_total")
    }


def send_huge_head(url: str, size: int, within: float = 15.0) -> int:
    """Send a head of ``size`` bytes (never finished) until the server stops taking it; returns
    the bytes sent."""
    sock = connect(url)
    sent = 0
    try:
        sock.sendall(b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Big: ")
        chunk = b"a" * CHUNK
        while sent < size:
            sock.sendall(chunk)
            sent += len(chunk)
        read_until_closed(sock, within)
    except OSError:
        pass  # the server closed the connection while we were still sending: what we want
    finally:
        sock.close()
    return sent
