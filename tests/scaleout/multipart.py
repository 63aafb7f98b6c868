"""A multipart ``file`` upload as raw bytes, for requests built by hand."""

from __future__ import annotations

import socket
import uuid
from urllib.parse import urlencode, urlsplit


def multipart_file(data: bytes, filename: str = "face.png", content_type: str = "image/png"):
    """(body, Content-Type header value) of a form with one field ``file``."""
    boundary = uuid.uuid4().hex
    body = (
        (
            f'--{boundary}\r\nContent-Disposition: form-data; name="file"; '
            f'filename="{filename}"\r\nContent-Type: {content_type}\r\n\r\n'
        ).encode()
        + data
        + f"\r\n--{boundary}--\r\n".encode()
    )
    return body, f"multipart/form-data; boundary={boundary}"


def send_upload(
    url: str, path: str, query: dict[str, object], data: bytes, headers: dict[str, str]
) -> socket.socket:
    """POST ``data`` as the multipart ``file``; see ``send_whole``."""
    body, content_type = multipart_file(data)
    return send_whole(url, "POST", path, query, {**headers, "Content-Type": content_type}, body)


def send_whole(
    url: str,
    method: str,
    path: str,
    query: dict[str, object],
    headers: dict[str, str],
    body: bytes = b"",
) -> socket.socket:
    """Send one request whole over a raw socket and return the socket, answer unread
    (``close()`` it to hang up)."""
    target = urlsplit(url)
    lines = [
        f"{method} {path}?{urlencode(query)} HTTP/1.1",
        f"Host: {target.netloc}",
        "Connection: close",
        f"Content-Length: {len(body)}",
        *(f"{name}: {value}" for name, value in headers.items()),
    ]
    sock = socket.create_connection((target.hostname, target.port), timeout=10)
    sock.sendall(("\r\n".join(lines) + "\r\n\r\n").encode() + body)
    return sock
