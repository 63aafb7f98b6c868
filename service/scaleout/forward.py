"""One HTTP request carried to another process and run there through the service's own app.

The gateway reads a request (head and whole body) into a picklable ``ForwardedRequest``; the
replica that serves it hands it to its in-process ASGI app with ``run_asgi`` and sends back the
``ForwardedResponse``. The app cannot tell it from a request uvicorn gave it, so the answer is
the one the single-process service gives.

A caller that stops waiting (Ray cancels the replica's task when the gateway cancels the call,
because its client hung up) becomes an ``http.disconnect`` to the app: its ``ClientDep``
cancellation stops the work at the next batch, and the app counts the request as 499, as
uvicorn's disconnect does in the single-process service.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field

from starlette.types import ASGIApp, Message, Scope

Header = tuple[bytes, bytes]


@dataclass(frozen=True)
class ForwardedRequest:
    method: str
    path: str
    query_string: bytes = b""
    headers: list[Header] = field(default_factory=list)
    body: bytes = b""
    client: tuple[str, int] | None = None
    scheme: str = "http"
    http_version: str = "1.1"
    root_path: str = ""

    @classmethod
    def from_scope(cls, scope: Scope, body: bytes) -> ForwardedRequest:
        client = scope.get("client")
        return cls(
            method=scope["method"],
            path=scope["path"],
            query_string=scope.get("query_string", b""),
            headers=[(bytes(k), bytes(v)) for k, v in scope.get("headers", [])],
            body=body,
            client=(client[0], client[1]) if client else None,
            scheme=scope.get("scheme", "http"),
            http_version=scope.get("http_version", "1.1"),
            root_path=scope.get("root_path", ""),
        )

    def scope(self) -> Scope:
        return {
            "type": "http",
            "asgi": {"version": "3.0", "spec_version": "2.3"},
            "http_version": self.http_version,
            "method": self.method,
            "scheme": self.scheme,
            "path": self.path,
            "raw_path": self.path.encode(),
            "root_path": self.root_path,
            "query_string": self.query_string,
            "headers": list(self.headers),
            "client": self.client,
            "server": None,
        }


@dataclass
class ForwardedResponse:
    status: int
    headers: list[Header] = field(default_factory=list)
    body: bytes = b""

    def header(self, name: str) -> str | None:
        wanted = name.lower().encode()
        return next((v.decode("latin-1") for k, v in self.headers if k.lower() == wanted), None)

    def messages(self) -> list[Message]:
        """The ASGI messages that send this response."""
        return [
            {"type": "http.response.start", "status": self.status, "headers": self.headers},
            {"type": "http.response.body", "body": self.body, "more_body": False},
        ]


async def run_asgi(app: ASGIApp, request: ForwardedRequest) -> ForwardedResponse:
    """``request`` through ``app``; its whole response.

    If the caller is cancelled while the app works, the app receives ``http.disconnect``, is
    waited for (it stops at its next batch), and the cancellation then goes on to the caller.
    """
    disconnected = asyncio.Event()
    body_given = False
    response = ForwardedResponse(status=500)
    chunks: list[bytes] = []

    async def receive() -> Message:
        nonlocal body_given
        if not body_given:
            body_given = True
            return {"type": "http.request", "body": request.body, "more_body": False}
        await disconnected.wait()  # as uvicorn: nothing more until the client is gone
        return {"type": "http.disconnect"}

    async def send(message: Message) -> None:
        if message["type"] == "http.response.start":
            response.status = message["status"]
            response.headers = [(bytes(k), bytes(v)) for k, v in message.get("headers", [])]
        elif message["type"] == "http.response.body":
            chunks.append(message.get("body", b""))
            if not message.get("more_body", False):
                disconnected.set()  # the response is complete, as uvicorn tells the app

    work = asyncio.ensure_future(app(request.scope(), receive, send))
    try:
        await asyncio.shield(work)
    except asyncio.CancelledError:
        if not work.done():
            disconnected.set()
            await asyncio.wait({work})  # the app stops at its next batch and answers 499
        raise
    response.body = b"".join(chunks)
    return response
