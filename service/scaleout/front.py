"""The HTTP front of ``python -m service --ray``: the single process's connection bounds in
front of Ray Serve's proxy.

Ray Serve's proxy runs uvicorn with a configuration of its own: no time limit on a request's
head or body, heads of any size, connections up to the file-descriptor limit; neither
``http_options`` nor a Serve config can change that. So ``python -m service --ray`` binds Ray's
proxy to a loopback port and faces clients with this front: uvicorn with the very protocol the
single-process service runs (``service.http.connection_limits``: ``header_timeout_s``,
``body_timeout_s``, ``min_body_rate_bytes_s``, ``max_header_bytes``, ``max_connections``, the
same 408, 431 and 503 answers) and its redacting access log. Its app, ``Relay``, carries each
request to Ray's proxy as it arrives (the body streamed, nothing buffered whole) and streams
the answer back (an event stream as its events come); a client that hangs up closes the
upstream connection, which Ray's proxy turns into the cancellation of the replica's work.
``X-Forwarded-For`` names the client (Ray's uvicorn trusts it from loopback only), so the
replicas see each client's own address, as in the single process.

The front's closes are counted in ``celebxai_connections_closed_total``, published to the
``MetricsBoard`` like a replica's registry, so ``/metrics`` shows them as in the single process.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

import h11
from prometheus_client import CollectorRegistry, generate_latest
from starlette.types import Receive, Scope, Send

from service.errors import NotReady, ServiceError
from service.http.connection_limits import BAD_REQUEST_CODE
from service.http.errors import error_response
from service.observability.trace_middleware import propagated
from service.scaleout.publisher import MetricsPublisher

log = logging.getLogger(__name__)

FRONT_NAME = "Front"
READ_CHUNK = 64 * 1024
RETRY_AFTER_UNAVAILABLE = "5"
# Headers of one hop only (RFC 9110 7.6.1), and what the front sets itself.
HOP_BY_HOP = frozenset(
    {
        b"connection",
        b"keep-alive",
        b"proxy-connection",
        b"te",
        b"trailer",
        b"upgrade",
        b"expect",  # the front has answered 100-continue itself
        b"x-forwarded-for",
        b"x-forwarded-proto",
        b"forwarded",
    }
)
RESPONSE_HOP_BY_HOP = frozenset({b"connection", b"keep-alive", b"transfer-encoding"})


@dataclass(frozen=True)
class Upstream:
    """Where Ray's proxy listens (loopback)."""

    host: str
    port: int


class Relay:
    """The front's ASGI app: every request carried to ``upstream`` and its answer back.

    One upstream connection per request (``Connection: close``): a loopback connect costs far
    less than a request, and no pooled connection can be closed by the proxy under a request.
    ``on_start`` and ``on_stop`` run in the app's lifespan, on the serving loop.
    """

    def __init__(
        self,
        upstream: Upstream,
        on_start: Callable[[], None] = lambda: None,
        on_stop: Callable[[], Awaitable[None]] | None = None,
    ) -> None:
        self.upstream = upstream
        self.on_start = on_start
        self.on_stop = on_stop

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "lifespan":
            await self._lifespan(receive, send)
            return
        if scope["type"] != "http":  # no websocket route in the app
            return
        try:
            reader, writer = await asyncio.open_connection(self.upstream.host, self.upstream.port)
        except OSError as exc:
            log.warning("Ray Serve's proxy at %s refused: %r", self.upstream, exc)
            await _answer(scope, receive, send, _unavailable())
            return
        try:
            await self._exchange(scope, receive, send, reader, writer)
        finally:
            writer.close()
            with contextlib.suppress(OSError):
                await writer.wait_closed()

    async def _exchange(
        self,
        scope: Scope,
        receive: Receive,
        send: Send,
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
    ) -> None:
        connection = h11.Connection(h11.CLIENT)
        try:
            head = h11.Request(
                method=scope["method"],
                target=_target(scope),
                headers=_request_headers(scope, self.upstream),
            )
        except h11.LocalProtocolError as exc:  # what uvicorn took but HTTP/1.1 does not allow
            message = f"the request cannot be relayed: {exc}"
            refusal = error_response(400, BAD_REQUEST_CODE, message, path=scope["path"])
            await refusal(scope, receive, send)
            return
        writer.write(connection.send(head))
        answering = asyncio.create_task(_relay_answer(reader, connection, send))
        sending = asyncio.create_task(_send_body(receive, connection, writer))
        try:
            done, _ = await asyncio.wait({answering, sending}, return_when=asyncio.FIRST_COMPLETED)
            if answering not in done:
                if sending.exception() is not None:  # the proxy stopped reading: its answer comes
                    await asyncio.wait({answering})
                elif sending.result():  # the whole body went: the answer, unless the client leaves
                    left = asyncio.create_task(_disconnected(receive))
                    await asyncio.wait({answering, left}, return_when=asyncio.FIRST_COMPLETED)
                    left.cancel()
                # else the client left while sending
            # else the answer came before the whole body (a refusal made from the head alone)
        finally:
            sending.cancel()
            if not answering.done():  # the client left: closing upstream cancels the work
                answering.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await sending
        if answering.done() and not answering.cancelled():
            failed = answering.result()
            if failed is not None:  # the proxy failed before its answer began
                await _answer(scope, receive, send, failed)

    async def _lifespan(self, receive: Receive, send: Send) -> None:
        while True:
            message = await receive()
            if message["type"] == "lifespan.startup":
                self.on_start()
                await send({"type": "lifespan.startup.complete"})
            elif message["type"] == "lifespan.shutdown":
                if self.on_stop is not None:
                    await self.on_stop()
                await send({"type": "lifespan.shutdown.complete"})
                return


def _target(scope: Scope) -> bytes:
    path = scope.get("raw_path") or scope["path"].encode()
    query = scope.get("query_string", b"")
    return path + b"?" + query if query else path


def _request_headers(scope: Scope, upstream: Upstream) -> list[tuple[bytes, bytes]]:
    headers = [
        (name, value) for name, value in scope.get("headers", []) if name.lower() not in HOP_BY_HOP
    ]
    headers = propagated(headers)
    if not any(name.lower() == b"host" for name, _ in headers):  # HTTP/1.0 may omit it
        headers.append((b"host", f"{upstream.host}:{upstream.port}".encode()))
    client = scope.get("client")
    if client:
        headers.append((b"x-forwarded-for", str(client[0]).encode()))
    headers.append((b"x-forwarded-proto", str(scope.get("scheme", "http")).encode()))
    headers.append((b"connection", b"close"))
    return headers


async def _send_body(
    receive: Receive, connection: h11.Connection, writer: asyncio.StreamWriter
) -> bool:
    """The request body, upstream as it arrives; False when the client left first."""
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            return False
        chunk = message.get("body", b"")
        if chunk:
            writer.write(connection.send(h11.Data(data=chunk)))
            await writer.drain()  # the client is read no faster than the proxy reads
        if not message.get("more_body", False):
            writer.write(connection.send(h11.EndOfMessage()))
            await writer.drain()
            return True


async def _relay_answer(
    reader: asyncio.StreamReader, connection: h11.Connection, send: Send
) -> ServiceError | None:
    """The upstream answer, sent on as it arrives; the error to answer instead when the
    upstream failed before its answer began (None once it began: a failure then only ends
    the response early, which uvicorn makes a close)."""
    started = False
    try:
        while True:
            event = connection.next_event()
            if event is h11.NEED_DATA:
                connection.receive_data(await reader.read(READ_CHUNK))
            elif isinstance(event, h11.InformationalResponse):
                continue
            elif isinstance(event, h11.Response):
                headers = [
                    (name, value)
                    for name, value in event.headers
                    if name.lower() not in RESPONSE_HOP_BY_HOP
                ]
                await send(
                    {"type": "http.response.start", "status": event.status_code, "headers": headers}
                )
                started = True
            elif isinstance(event, h11.Data):
                await send(
                    {"type": "http.response.body", "body": bytes(event.data), "more_body": True}
                )
            elif isinstance(event, h11.ConnectionClosed) and not started:
                raise h11.RemoteProtocolError("closed before answering")
            elif isinstance(event, (h11.EndOfMessage, h11.ConnectionClosed)):
                await send({"type": "http.response.body", "body": b"", "more_body": False})
                return None
    except (OSError, h11.RemoteProtocolError) as exc:
        if started:
            log.warning("Ray Serve's proxy ended an answer early: %r", exc)
            return None
        log.warning("Ray Serve's proxy failed before answering: %r", exc)
        return _unavailable()


async def _disconnected(receive: Receive) -> None:
    while (await receive())["type"] != "http.disconnect":
        pass


def _unavailable() -> ServiceError:
    return NotReady(
        "the Ray Serve proxy is not reachable; retry shortly",
        headers={"Retry-After": RETRY_AFTER_UNAVAILABLE},
    )


async def _answer(scope: Scope, receive: Receive, send: Send, error: ServiceError) -> None:
    response = error_response(
        error.status, error.code, error.message, error.headers, path=scope["path"]
    )
    await response(scope, receive, send)


def front_publisher(registry: CollectorRegistry, board: object) -> MetricsPublisher:
    """The front's registry published to the ``MetricsBoard`` (its handle: ``board``), so the
    gateway's ``/metrics`` sums the front's closes with the replicas' samples."""
    return MetricsPublisher(
        FRONT_NAME,
        lambda: generate_latest(registry).decode(),
        lambda name, text: board.publish.remote(name, text),  # type: ignore[attr-defined]
        lambda name: board.withdraw.remote(name),  # type: ignore[attr-defined]
    )
