"""service.observability.tracing and its HTTP middleware: which OTEL_* variables turn traces
on, what an exporter receives, and that nothing is made while tracing is off."""

from __future__ import annotations

import sys
import time
from collections.abc import Iterator

import pytest
from opentelemetry import trace
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind, StatusCode
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route
from starlette.testclient import TestClient

from service.observability import tracing
from service.observability.trace_middleware import TracingMiddleware

OTLP_MODULE = "opentelemetry.exporter.otlp.proto.http.trace_exporter"


@pytest.fixture()
def exporter() -> Iterator[InMemorySpanExporter]:
    exporter = InMemorySpanExporter()
    tracing.use_exporter(exporter)
    try:
        yield exporter
    finally:
        tracing.stop()


@pytest.fixture()
def client() -> TestClient:
    """A tiny app behind the middleware; each answer says which span was current in it."""

    async def current(request: Request) -> JSONResponse:
        context = trace.get_current_span().get_span_context()
        status = int(request.query_params.get("status", "200"))
        return JSONResponse({"trace_id": context.trace_id, "valid": context.is_valid}, status)

    app = Starlette(routes=[Route("/items/{name}", current)])
    return TestClient(TracingMiddleware(app))


@pytest.mark.parametrize(
    ("environ", "name"),
    [
        ({}, "none"),
        ({"OTEL_TRACES_EXPORTER": "none"}, "none"),
        ({"OTEL_TRACES_EXPORTER": "console"}, "console"),
        ({"OTEL_TRACES_EXPORTER": " OTLP "}, "otlp"),
        ({"OTEL_EXPORTER_OTLP_ENDPOINT": "http://collector:4318"}, "otlp"),
        ({"OTEL_EXPORTER_OTLP_TRACES_ENDPOINT": "http://c:4318/v1/traces"}, "otlp"),
        ({"OTEL_TRACES_EXPORTER": "none", "OTEL_EXPORTER_OTLP_ENDPOINT": "http://c"}, "none"),
        ({"OTEL_TRACES_EXPORTER": "console", "OTEL_SDK_DISABLED": "true"}, "none"),
    ],
)
def test_exporter_name_from_the_otel_variables(environ, name):
    assert tracing.exporter_name(environ) == name


def test_an_unknown_exporter_is_refused_naming_the_valid_ones():
    with pytest.raises(tracing.TracingError, match="'jaeger' is not supported; valid: console"):
        tracing.exporter_name({"OTEL_TRACES_EXPORTER": "jaeger"})


def test_otlp_without_its_package_fails_saying_what_to_install(monkeypatch):
    monkeypatch.setitem(sys.modules, OTLP_MODULE, None)  # import fails as if not installed

    with pytest.raises(tracing.TracingError, match="pip install opentelemetry-exporter-otlp"):
        tracing.configure_from_environment({"OTEL_TRACES_EXPORTER": "otlp"})
    assert not tracing.enabled()


def test_otlp_exporter_is_made_when_installed():
    pytest.importorskip(OTLP_MODULE)

    assert type(tracing.make_exporter("otlp")).__name__ == "OTLPSpanExporter"


def test_configured_off_nothing_is_installed():
    assert tracing.configure_from_environment({}) == "none"

    assert not tracing.enabled()
    assert isinstance(tracing.tracer(), trace.NoOpTracer)
    assert tracing.current_context() is None
    assert not tracing.flush()


def test_off_the_middleware_makes_no_span(client):
    body = client.get("/items/a").json()

    assert body == {"trace_id": 0, "valid": False}


def test_off_a_span_costs_next_to_nothing():
    runs = 20_000
    started = time.perf_counter()
    for _ in range(runs):
        with tracing.span("decode", {"celebxai.image.bytes": 1}):
            pass
    per_span_s = (time.perf_counter() - started) / runs

    assert per_span_s < 20e-6  # a few microseconds at most, on a loaded CI machine


def test_server_span_named_by_route_with_status(client, exporter):
    body = client.get("/items/a").json()

    assert tracing.flush()
    (span,) = exporter.get_finished_spans()
    assert span.kind is SpanKind.SERVER
    assert span.name == "GET /items/{name}"
    assert span.context.trace_id == body["trace_id"]  # current while the app ran
    assert span.attributes["http.route"] == "/items/{name}"
    assert span.attributes["url.path"] == "/items/a"
    assert span.attributes["http.response.status_code"] == 200
    assert span.status.status_code is StatusCode.UNSET
    assert span.resource.attributes["service.name"] == "celebxai"


def test_a_4xx_answer_is_an_error_span(client, exporter):
    assert client.get("/items/a?status=422").status_code == 422

    assert tracing.flush()
    (span,) = exporter.get_finished_spans()
    assert span.status.status_code is StatusCode.ERROR
    assert span.attributes["error.type"] == "422"
    assert "status=422" not in str(span.attributes)  # the query string is never recorded


def test_traceparent_is_continued_and_tracestate_kept(client, exporter):
    trace_id, parent = "0af7651916cd43dd8448eb211c80319c", "b7ad6b7169203331"
    headers = {"traceparent": f"00-{trace_id}-{parent}-01", "tracestate": "vendor=1"}

    body = client.get("/items/a", headers=headers).json()

    assert tracing.flush()
    (span,) = exporter.get_finished_spans()
    assert body["trace_id"] == span.context.trace_id == int(trace_id, 16)
    assert span.parent is not None and span.parent.span_id == int(parent, 16)
    assert span.parent.is_remote
    assert span.context.trace_state.get("vendor") == "1"


def test_service_name_from_otel_service_name(monkeypatch):
    monkeypatch.setenv("OTEL_SERVICE_NAME", "celebxai-eu")
    exporter = InMemorySpanExporter()
    tracing.use_exporter(exporter)
    try:
        with tracing.span("x"):
            pass
        assert tracing.flush()
    finally:
        tracing.stop()

    (span,) = exporter.get_finished_spans()
    assert span.resource.attributes["service.name"] == "celebxai-eu"


def test_record_places_a_span_after_the_fact(exporter):
    with tracing.span("request") as request:
        parent = tracing.current_context()
    assert parent is not None
    started = time.perf_counter()
    ended = started + 0.25

    made = tracing.record("batch wait", parent, started, ended, {"celebxai.batch.size": 3})

    assert tracing.flush()
    (wait,) = [span for span in exporter.get_finished_spans() if span.name == "batch wait"]
    assert wait.context.span_id == made.get_span_context().span_id
    assert wait.parent.span_id == request.get_span_context().span_id
    assert wait.end_time - wait.start_time == pytest.approx(250_000_000, abs=1_000)
    assert abs(wait.start_time - time.time_ns()) < 5e9


def test_an_exception_in_a_span_marks_it_failed(exporter):
    with pytest.raises(ValueError), tracing.span("decode"):
        raise ValueError("broken header")

    assert tracing.flush()
    (span,) = exporter.get_finished_spans()
    assert span.status.status_code is StatusCode.ERROR
    assert span.events[0].name == "exception"


def test_stop_turns_it_off_again(exporter):
    assert tracing.enabled()

    tracing.stop()

    assert not tracing.enabled()
    assert tracing.current_context() is None
