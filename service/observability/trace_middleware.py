"""The server span of every HTTP request (pure ASGI middleware), parent of the request's spans.

A W3C ``traceparent`` (and ``tracestate``) header continues the caller's trace; without one the
request starts a trace of its own. The span is named ``<METHOD> <route template>`` once the
router has matched (``<METHOD>`` alone for a path no route serves) and carries the method, the
route, the path and the status; a status of 400 or more sets the span's status to error (a
rejected upload shows as a failed request). Headers other than the trace context, the query
string and the body are never recorded (API keys, images). While tracing is off the middleware
only passes the request on.
"""

from __future__ import annotations

from collections.abc import Callable

from opentelemetry import context as otel_context
from opentelemetry import trace
from opentelemetry.trace import SpanKind, Status, StatusCode
from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator
from starlette.types import ASGIApp, Receive, Scope, Send

from service.observability import tracing
from service.observability.metrics import UNMATCHED, ResponseStatus, route_template

PROPAGATOR = TraceContextTextMapPropagator()
TRACE_HEADERS = (b"traceparent", b"tracestate")
Header = tuple[bytes, bytes]


def incoming_context(scope: Scope) -> otel_context.Context:
    """The trace context of the request's ``traceparent``/``tracestate`` headers (an empty
    context without them)."""
    carrier = {
        name.decode("latin-1").lower(): value.decode("latin-1")
        for name, value in scope.get("headers", [])
        if name.lower() in TRACE_HEADERS
    }
    return PROPAGATOR.extract(carrier)


def propagated(headers: list[Header]) -> list[Header]:
    """``headers`` of a request this process passes on, its trace context replaced by the
    current one (the span made here for it), so that the next process's spans join the trace;
    ``headers`` as they are while tracing is off."""
    if not tracing.enabled():
        return headers
    carrier: dict[str, str] = {}
    PROPAGATOR.inject(carrier)
    kept = [(name, value) for name, value in headers if name.lower() not in TRACE_HEADERS]
    return kept + [
        (name.encode("latin-1"), value.encode("latin-1")) for name, value in carrier.items()
    ]


class TracingMiddleware:
    """Opens the server span of each HTTP request of ``app`` and makes it current.
    ``route_of``: the route template of a request once answered (default: the one the app's
    router matched, ``UNMATCHED`` for none)."""

    def __init__(self, app: ASGIApp, route_of: Callable[[Scope], str] = route_template) -> None:
        self.app = app
        self.route_of = route_of

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or not tracing.enabled():
            await self.app(scope, receive, send)
            return
        method = scope["method"]
        response = ResponseStatus(send)

        server = tracing.tracer().start_span(
            method,
            context=incoming_context(scope),
            kind=SpanKind.SERVER,
            attributes={"http.request.method": method, "url.path": scope["path"]},
        )
        token = otel_context.attach(trace.set_span_in_context(server))
        try:
            await self.app(scope, receive, response.send)
        except BaseException as exc:
            tracing.fail(server, exc)
            raise
        finally:
            otel_context.detach(token)
            route = self.route_of(scope)
            if route != UNMATCHED:
                server.update_name(f"{method} {route}")
                server.set_attribute("http.route", route)
            status = response.code
            server.set_attribute("http.response.status_code", status)
            if status >= 400 and server.is_recording():
                server.set_attribute("error.type", str(status))
                server.set_status(Status(StatusCode.ERROR, f"HTTP {status}"))
            server.end()
