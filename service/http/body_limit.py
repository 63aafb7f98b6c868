"""Caps the request body while it is read, before the multipart parser spools it anywhere.

A declared ``Content-Length`` over the limit is refused at once; a chunked body is counted as it
arrives and refused as soon as it passes the limit. Both give 413 ``file_too_large``.
"""

from __future__ import annotations

from starlette.datastructures import Headers
from starlette.exceptions import HTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from service.errors import FileTooLarge
from service.http.errors import error_response


def length_of(text: str) -> int | None:
    """A length header's value (``Content-Length`` and the like) as a number; None unless it is
    plain ASCII digits (``str.isdigit`` also takes superscripts, which ``int`` refuses)."""
    text = text.strip()
    return int(text) if text.isascii() and text.isdigit() else None


class BodyTooLarge(FileTooLarge, HTTPException):
    """``FileTooLarge`` raised while FastAPI parses the body: its parser passes an
    ``HTTPException`` through unchanged, and would answer any other exception with a 400."""

    def __init__(self, message: str) -> None:
        FileTooLarge.__init__(self, message)
        HTTPException.__init__(self, status_code=self.status, detail=message)


class BodySizeLimitMiddleware:
    def __init__(self, app: ASGIApp, max_body_bytes: int) -> None:
        self.app = app
        self.max_body_bytes = max_body_bytes

    def _too_large(self) -> BodyTooLarge:
        return BodyTooLarge(f"request body is larger than the limit of {self.max_body_bytes} bytes")

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        declared = length_of(Headers(scope=scope).get("content-length", ""))
        if declared is not None and declared > self.max_body_bytes:
            error = self._too_large()
            response = error_response(error.status, error.code, error.message, path=scope["path"])
            await response(scope, receive, send)
            return
        received = 0

        async def limited_receive() -> Message:
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > self.max_body_bytes:
                    raise self._too_large()
            return message

        await self.app(scope, limited_receive, send)
