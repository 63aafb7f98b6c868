"""Bounds on what one HTTP connection may hold: time to send its head, gaps in its body, and
the size of its head.

uvicorn closes idle keep-alive connections (``timeout_keep_alive``) but has no read timeout of
its own, and its httptools parser takes request heads of any size. So a client could hold a
connection (and the memory of its unfinished head) for as long as it liked: a fresh connection
that sends nothing, a head that never ends, a body shorter than its ``Content-Length``, an upload
that stalls. ``GuardedHttpToolsProtocol`` is uvicorn's httptools protocol with three bounds:

- the request head (request line and headers) must arrive within ``header_timeout_s`` of the
  connection opening, or of the first byte of a later request on a kept-alive connection;
  else 408 ``request_timeout`` (or, when nothing at all arrived, a plain close);
- while the body is being received, at most ``body_timeout_s`` may pass without a byte of it
  (a stall; time the server itself is not reading does not count); else 408;
- the head may hold at most ``max_header_bytes``; the parser never sees more, so an unfinished
  head costs at most that much memory; beyond it, 431 ``headers_too_large``.

Each refusal is JSON in the service's error shape with ``Connection: close``, and is reported to
``on_refused(reason)`` (the service counts them in ``/metrics``). uvicorn's own 400 for a request
it cannot parse is JSON ``bad_request`` here too. ``protocol_class`` makes the class that
``uvicorn.Config(http=...)`` takes.
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, ClassVar

from prometheus_client import CollectorRegistry, Counter
from uvicorn.protocols.http.httptools_impl import STATUS_LINE, HttpToolsProtocol

from service.errors import HeadersTooLarge, RequestTimeout, ServiceError
from service.http.errors import error_body

log = logging.getLogger(__name__)

BAD_REQUEST_CODE = "bad_request"


@dataclass(frozen=True)
class ConnectionLimits:
    """Per-connection bounds (from ``Settings``): seconds, seconds, bytes."""

    header_timeout_s: float
    body_timeout_s: float
    max_header_bytes: int


def protocol_class(
    limits: ConnectionLimits, on_refused: Callable[[str], None] | None = None
) -> type[asyncio.Protocol]:
    """A ``GuardedHttpToolsProtocol`` subclass bound to ``limits`` (uvicorn makes one protocol
    object per connection from the class it is given, with no room for extra arguments)."""
    return type(
        "GuardedHttpToolsProtocol",
        (GuardedHttpToolsProtocol,),
        {"limits": limits, "on_refused": staticmethod(on_refused or (lambda reason: None))},
    )


def error_bytes(status: int, code: str, message: str, default_headers: list) -> bytes:
    """A complete HTTP/1.1 JSON error response that closes the connection."""
    body = json.dumps(error_body(code, message)).encode()
    lines = [STATUS_LINE[status]]
    for name, value in default_headers:
        lines.extend([name, b": ", value, b"\r\n"])
    lines.extend(
        [
            b"content-type: application/json\r\n",
            b"content-length: " + str(len(body)).encode("ascii") + b"\r\n",
            b"connection: close\r\n\r\n",
            body,
        ]
    )
    return b"".join(lines)


class GuardedHttpToolsProtocol(HttpToolsProtocol):
    limits: ClassVar[ConnectionLimits]

    @staticmethod
    def on_refused(reason: str) -> None:
        """Told why each connection was refused or closed early (``protocol_class`` sets it)."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._in_head = True  # waiting for (the rest of) a request head
        self._head_bytes = 0  # bytes of that head received so far
        self._head_timer: asyncio.TimerHandle | None = None
        self._body_timer: asyncio.TimerHandle | None = None

    # --- connection ---------------------------------------------------------------------------
    # asyncio types the argument as BaseTransport; uvicorn's HttpToolsProtocol narrows it to the
    # Transport it is always given (with the same ignore), and this override follows uvicorn.
    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self._arm_head_timer()

    def connection_lost(self, exc: Exception | None) -> None:
        self._cancel_timers()
        super().connection_lost(exc)

    def data_received(self, data: bytes) -> None:
        if not self._in_head:
            super().data_received(data)
            return
        room = self.limits.max_header_bytes - self._head_bytes
        if len(data) <= room:
            self._head_bytes += len(data)
            super().data_received(data)
            return
        # Feed only what fits: if the head ends within it, the rest is body (or a next request).
        self._head_bytes += room
        super().data_received(data[:room])
        if self.transport.is_closing():
            return
        if self._in_head:
            self._refuse(
                HeadersTooLarge(
                    f"the request line and headers are larger than the limit of "
                    f"{self.limits.max_header_bytes} bytes"
                ),
                "headers_too_large",
            )
            return
        super().data_received(data[room:])

    def send_400_response(self, msg: str) -> None:
        """uvicorn's answer to a request it cannot parse, in the service's JSON error shape."""
        self._cancel_timers()
        self.on_refused(BAD_REQUEST_CODE)
        self.transport.write(
            error_bytes(400, BAD_REQUEST_CODE, msg, self.server_state.default_headers)
        )
        self.transport.close()

    # --- parser callbacks ---------------------------------------------------------------------
    def on_message_begin(self) -> None:
        super().on_message_begin()
        if self._head_timer is None:  # a later request on a kept-alive connection
            self._arm_head_timer()

    def on_headers_complete(self) -> None:
        self._in_head = False
        self._cancel_head_timer()
        super().on_headers_complete()
        self._arm_body_timer()

    def on_body(self, body: bytes) -> None:
        super().on_body(body)
        self._arm_body_timer()

    def on_message_complete(self) -> None:
        super().on_message_complete()
        self._cancel_body_timer()
        self._in_head, self._head_bytes = True, 0

    # --- timers -------------------------------------------------------------------------------
    def _arm_head_timer(self) -> None:
        self._cancel_head_timer()
        self._head_timer = self.loop.call_later(self.limits.header_timeout_s, self._head_timed_out)

    def _arm_body_timer(self) -> None:
        self._cancel_body_timer()
        self._body_timer = self.loop.call_later(self.limits.body_timeout_s, self._body_timed_out)

    def _cancel_head_timer(self) -> None:
        if self._head_timer is not None:
            self._head_timer.cancel()
            self._head_timer = None

    def _cancel_body_timer(self) -> None:
        if self._body_timer is not None:
            self._body_timer.cancel()
            self._body_timer = None

    def _cancel_timers(self) -> None:
        self._cancel_head_timer()
        self._cancel_body_timer()

    def _head_timed_out(self) -> None:
        self._head_timer = None
        if self._head_bytes == 0:  # nothing sent at all: nobody to answer
            self._close("idle_connection")
            return
        self._refuse(
            RequestTimeout(
                f"the request line and headers did not arrive within "
                f"{self.limits.header_timeout_s:g} s"
            ),
            "header_timeout",
        )

    def _body_timed_out(self) -> None:
        self._body_timer = None
        if self.flow.read_paused:  # the server is not reading (the app is busy): not a stall
            self._arm_body_timer()
            return
        self._refuse(
            RequestTimeout(
                f"the request body stalled: no data for {self.limits.body_timeout_s:g} s"
            ),
            "body_timeout",
        )

    # --- closing ------------------------------------------------------------------------------
    def _refuse(self, error: ServiceError, reason: str) -> None:
        """Answer ``error`` (unless a response to this request has begun) and close."""
        cycle = self.cycle
        answering = cycle is not None and cycle.response_started and not cycle.response_complete
        if not self.transport.is_closing() and not answering:
            self.transport.write(
                error_bytes(
                    error.status, error.code, error.message, self.server_state.default_headers
                )
            )
        self._close(reason)

    def _close(self, reason: str) -> None:
        self._cancel_timers()
        if self.transport.is_closing():
            return
        client = "{}:{}".format(*self.client) if self.client else "client"
        log.info("closing the connection from %s: %s", client, reason.replace("_", " "))
        self.on_refused(reason)
        self.transport.close()


def refusal_counter(registry: CollectorRegistry) -> Counter:
    """``celebxai_connections_closed_total{reason}`` in ``registry``: connections this module
    closed, by reason (idle_connection, header_timeout, body_timeout, headers_too_large,
    bad_request). ``counter.labels(reason=...).inc`` is the ``on_refused`` to give."""
    return Counter(
        "celebxai_connections_closed",
        "connections closed by the server for a slow, stalled, oversized or malformed request",
        ("reason",),
        registry=registry,
    )
