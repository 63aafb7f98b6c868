"""A multipart ``file`` upload as raw bytes, for requests built by hand."""

from __future__ import annotations

import uuid


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
