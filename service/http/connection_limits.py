"""Bounds on what one HTTP connection may hold: time to send its head, gaps in its body, the
pace of its body, the size of its head, and how many connections the server holds at once.

uvicorn closes idle keep-alive connections (``timeout_keep_alive``) but has no read timeout of
its own, and its httptools parser takes request heads of any size. So a client could hold a
connection (and the memory of its unfinished head) for as long as it liked: a fresh connection
that sends nothing, a head that never ends, a body shorter than its ``Content-Length``, an upload
that stalls, a body trickled a byte at a time, connections up to the file-descriptor limit.
``GuardedHttpToolsProtocol`` is uvicorn's httptools protocol with these bounds:

- the request head (request line and headers) must arrive within ``header_timeout_s`` of the
  connection opening, or of the first byte of a later request on a kept-alive connection;
  else 408 ``request_timeout`` (or, when nothing at all arrived, a plain close);
- while the body is being received, at most ``body_timeout_s`` may pass without a byte of it
  (a stall; time the server itself is not reading does not count); else 408;
- once ``body_timeout_s`` of receiving a body has passed, the body must have come at an average
  of at least ``min_body_rate_bytes_s`` (again not counting time the server is not reading), so
  a body trickled a byte at a time, each byte just inside the stall bound, is cut too; else 408;
- the head may hold at most ``max_header_bytes``; the parser never sees more, so an unfinished
  head costs at most that much memory; beyond it, 431 ``headers_too_large``;
- a client that reads nothing of its response for ``write_timeout_s`` while more of it waits
  (the transport paused writing: an event stream or a PNG it never reads) is aborted, so it
  holds no connection, and no task of the app, past that;
- at most ``max_connections`` connections are open at once; one beyond is answered 503
  ``overloaded`` (with ``Retry-After``) as soon as it opens, before its request is read, and
  closed, so the server never runs out of file descriptors and the open ones keep being served.
  (uvicorn's ``limit_concurrency`` is not that bound: it counts requests as well as connections,
  accepts every connection, and answers only once a whole head has arrived, in plain text.)

Each refusal is JSON in the service's error shape with ``Connection: close``, and is reported to
``on_refused(reason)`` (the service counts them in ``/metrics``). uvicorn's own 400 for a request
it cannot parse is JSON ``bad_request`` here too. ``protocol_class`` makes the class that
``uvicorn.Config(http=...)`` takes.
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, ClassVar

from prometheus_client import CollectorRegistry, Counter
from uvicorn.protocols.http.flow_control import FlowControl
from uvicorn.protocols.http.httptools_impl import STATUS_LINE, HttpToolsProtocol

from service.errors import HeadersTooLarge, Overloaded, RequestTimeout, ServiceError
from service.http.errors import error_body
from service.settings import Settings

log = logging.getLogger(__name__)

BAD_REQUEST_CODE = "bad_request"
RETRY_AFTER_FULL_S = "1"


@dataclass(frozen=True)
class ConnectionLimits:
    """Per-connection bounds (from ``Settings``): seconds, seconds, bytes, bytes per second,
    and the server's open connections."""

    header_timeout_s: float
    body_timeout_s: float
    max_header_bytes: int
    min_body_rate_bytes_s: float
    max_connections: int
    write_timeout_s: float = 30.0

    @classmethod
    def from_settings(cls, settings: Settings) -> ConnectionLimits:
        return cls(
            header_timeout_s=settings.header_timeout_s,
            body_timeout_s=settings.body_timeout_s,
            max_header_bytes=settings.max_header_bytes,
            min_body_rate_bytes_s=settings.min_body_rate_bytes_s,
            max_connections=settings.max_connections,
            write_timeout_s=settings.write_timeout_s,
        )


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


def error_bytes(
    status: int,
    code: str,
    message: str,
    default_headers: list,
    headers: Mapping[str, str] | None = None,
) -> bytes:
    """A complete HTTP/1.1 JSON error response (with ``headers``) that closes the connection."""
    body = json.dumps(error_body(code, message)).encode()
    lines = [STATUS_LINE[status]]
    for name, value in default_headers:
        lines.extend([name, b": ", value, b"\r\n"])
    for text_name, text_value in (headers or {}).items():
        lines.extend([text_name.encode("latin-1"), b": ", text_value.encode("latin-1"), b"\r\n"])
    lines.extend(
        [
            b"content-type: application/json\r\n",
            b"content-length: " + str(len(body)).encode("ascii") + b"\r\n",
            b"connection: close\r\n\r\n",
            body,
        ]
    )
    return b"".join(lines)


class PausedTimeFlowControl(FlowControl):
    """uvicorn's flow control, also keeping the time reading was paused (the server not
    reading is no fault of the client's: it does not count against the body's pace)."""

    def __init__(self, transport: asyncio.Transport, clock: Callable[[], float]) -> None:
        super().__init__(transport)
        self.clock = clock
        self._paused_at = 0.0
        self._paused_s = 0.0

    def paused_s(self) -> float:
        """Seconds reading has been paused so far, on this connection."""
        ongoing = self.clock() - self._paused_at if self.read_paused else 0.0
        return self._paused_s + ongoing

    def pause_reading(self) -> None:
        if not self.read_paused:
            self._paused_at = self.clock()
        super().pause_reading()

    def resume_reading(self) -> None:
        if self.read_paused:
            self._paused_s += self.clock() - self._paused_at
        super().resume_reading()


class GuardedHttpToolsProtocol(HttpToolsProtocol):
    limits: ClassVar[ConnectionLimits]
    flow: PausedTimeFlowControl

    @staticmethod
    def on_refused(reason: str) -> None:
        """Told why each connection was refused or closed early (``protocol_class`` sets it)."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._in_head = True  # waiting for (the rest of) a request head
        self._head_bytes = 0  # bytes of that head received so far
        self._head_timer: asyncio.TimerHandle | None = None
        self._body_timer: asyncio.TimerHandle | None = None
        self._body_started = 0.0  # when the head ended: the body's clock (loop time)
        self._body_paused_s = 0.0  # the time reading was paused by then
        self._body_bytes = 0  # bytes of that body received so far
        self._write_timer: asyncio.TimerHandle | None = None

    # --- connection ---------------------------------------------------------------------------
    # asyncio types the argument as BaseTransport; uvicorn's HttpToolsProtocol narrows it to the
    # Transport it is always given (with the same ignore), and this override follows uvicorn.
    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self.flow = PausedTimeFlowControl(transport, self.loop.time)
        if len(self.server_state.connections) > self.limits.max_connections:
            self._refuse(
                Overloaded(
                    f"the server holds its limit of {self.limits.max_connections} connections; "
                    "retry shortly",
                    headers={"Retry-After": RETRY_AFTER_FULL_S},
                ),
                "too_many_connections",
            )
            return
        self._arm_head_timer()

    def connection_lost(self, exc: Exception | None) -> None:
        self._cancel_timers()
        self._cancel_write_timer()
        super().connection_lost(exc)

    # --- a client that does not read ----------------------------------------------------------
    # The transport pauses writing when more than its high-water mark waits for the client: the
    # app's next send then waits for the client to read. A client that reads nothing for
    # ``write_timeout_s`` from then (an event stream it never reads, a PNG it never takes) is
    # dropped: aborted, since a plain close would wait for it to read what is buffered.
    def pause_writing(self) -> None:
        super().pause_writing()
        if self._write_timer is None:
            self._write_timer = self.loop.call_later(
                self.limits.write_timeout_s, self._write_timed_out
            )

    def resume_writing(self) -> None:
        self._cancel_write_timer()
        super().resume_writing()

    def _cancel_write_timer(self) -> None:
        if self._write_timer is not None:
            self._write_timer.cancel()
            self._write_timer = None

    def _write_timed_out(self) -> None:
        self._write_timer = None
        if not self.flow.write_paused:
            return
        client = "{}:{}".format(*self.client) if self.client else "client"
        log.info(
            "dropping the connection from %s: it read nothing of the response for %g s",
            client,
            self.limits.write_timeout_s,
        )
        self._cancel_timers()
        self.on_refused("write_timeout")
        self.transport.abort()

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
        self._body_started, self._body_paused_s = self.loop.time(), self.flow.paused_s()
        self._body_bytes = 0
        self._arm_body_timer()

    def on_body(self, body: bytes) -> None:
        super().on_body(body)
        self._body_bytes += len(body)
        if self._too_slow():
            self._refuse(
                RequestTimeout(
                    f"the request body arrived at under {self.limits.min_body_rate_bytes_s:g} "
                    f"bytes/s, the slowest pace accepted after {self.limits.body_timeout_s:g} s"
                ),
                "body_too_slow",
            )
            return
        self._arm_body_timer()

    def _too_slow(self) -> bool:
        """Whether the body, once past ``body_timeout_s`` of the client's time (reading paused
        by the server not counted), came slower than ``min_body_rate_bytes_s`` on average."""
        paused = self.flow.paused_s() - self._body_paused_s
        sending_s = self.loop.time() - self._body_started - paused
        if sending_s <= self.limits.body_timeout_s:
            return False
        return self._body_bytes < self.limits.min_body_rate_bytes_s * sending_s

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
                    error.status,
                    error.code,
                    error.message,
                    self.server_state.default_headers,
                    error.headers,
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
    closed, by reason (idle_connection, header_timeout, body_timeout, body_too_slow,
    headers_too_large, too_many_connections, bad_request, write_timeout).
    ``counter.labels(reason=...).inc`` is the ``on_refused`` to give."""
    return Counter(
        "celebxai_connections_closed",
        "connections closed by the server for a slow, stalled, oversized or malformed request",
        ("reason",),
        registry=registry,
    )
