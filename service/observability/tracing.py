"""OpenTelemetry traces of the service: one trace per request, off unless configured.

Off (the default), ``tracer()`` is the API's no-op tracer: no SDK provider exists, a span costs
a few hundred nanoseconds, and ``enabled()`` is false so that the HTTP middleware and the
batcher skip their bookkeeping. ``configure_from_environment`` turns it on from OpenTelemetry's
own variables, read once at start-up (``python -m service`` and every Ray replica):

- ``OTEL_TRACES_EXPORTER``: ``console`` (spans as JSON on stdout), ``otlp`` (OTLP over HTTP, to
  ``OTEL_EXPORTER_OTLP_ENDPOINT``; needs the ``opentelemetry-exporter-otlp-proto-http``
  package, start-up fails saying so without it), or ``none``/unset (off);
- unset but ``OTEL_EXPORTER_OTLP_ENDPOINT`` or ``OTEL_EXPORTER_OTLP_TRACES_ENDPOINT`` set: otlp;
- ``OTEL_SDK_DISABLED=true``: off whatever else is set;
- ``OTEL_SERVICE_NAME`` (default ``celebxai``) and ``OTEL_RESOURCE_ATTRIBUTES``: the SDK reads
  them into the spans' resource.

``use_exporter`` is the one way tracing turns on: the environment's exporter goes through it,
and a test hands it an ``InMemorySpanExporter``. The service keeps its provider here instead of
OpenTelemetry's process-wide one, which can be set only once per process.

Spans made after the fact (``record``) carry times from ``time.perf_counter()`` readings taken
where the work happened (the batcher's queue, a batch on the inference thread).
"""

from __future__ import annotations

import logging
import os
import sys
import time
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from typing import Any

from opentelemetry import context as otel_context
from opentelemetry import trace
from opentelemetry.context import Context
from opentelemetry.trace import Link, Span, SpanKind, Status, StatusCode, Tracer
from opentelemetry.util.types import AttributeValue

log = logging.getLogger(__name__)

SERVICE_NAME = "celebxai"
"""The resource's ``service.name`` unless ``OTEL_SERVICE_NAME`` names another."""
EXPORTERS = ("console", "otlp", "none")
OTLP_PACKAGE = "opentelemetry-exporter-otlp-proto-http"

_NO_OP: Tracer = trace.NoOpTracer()
_tracer: Tracer = _NO_OP
_provider: Any = None  # the SDK's TracerProvider while tracing is on


class TracingError(Exception):
    """The OTEL_* variables ask for traces that cannot be made (an unknown exporter, OTLP
    without its package)."""


def tracer() -> Tracer:
    """The service's tracer: the SDK's while tracing is on, else the no-op tracer."""
    return _tracer


def enabled() -> bool:
    return _tracer is not _NO_OP


def use_exporter(exporter: Any, *, service_name: str | None = None) -> Any:
    """Turn tracing on, every finished span batched to ``exporter`` (a ``SpanExporter``);
    returns the SDK ``TracerProvider`` (``force_flush`` it to see the spans at once). A
    previous exporter is shut down first. ``service_name``: the resource's ``service.name``
    (default: ``OTEL_SERVICE_NAME``, else ``celebxai``)."""
    from opentelemetry.sdk.resources import SERVICE_NAME as SERVICE_NAME_KEY
    from opentelemetry.sdk.resources import Resource
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import BatchSpanProcessor

    global _tracer, _provider
    stop()
    attributes = {SERVICE_NAME_KEY: service_name} if service_name else {}
    resource = Resource.create(attributes)
    # without OTEL_SERVICE_NAME the SDK names it unknown_service:<executable>
    if str(resource.attributes.get(SERVICE_NAME_KEY, "")).startswith("unknown_service"):
        resource = resource.merge(Resource({SERVICE_NAME_KEY: SERVICE_NAME}))
    provider = TracerProvider(resource=resource)
    provider.add_span_processor(BatchSpanProcessor(exporter))
    _provider, _tracer = provider, provider.get_tracer("service")
    return provider


def stop() -> None:
    """Export what is pending and turn tracing off (the no-op tracer again)."""
    global _tracer, _provider
    provider, _provider, _tracer = _provider, None, _NO_OP
    if provider is not None:
        provider.shutdown()


def flush(timeout_ms: int = 5000) -> bool:
    """Export every finished span now; False when nothing is on or it timed out."""
    return bool(_provider is not None and _provider.force_flush(timeout_ms))


def exporter_name(environ: Mapping[str, str]) -> str:
    """Which exporter the OTEL_* variables of ``environ`` ask for: console | otlp | none."""
    if environ.get("OTEL_SDK_DISABLED", "").strip().lower() == "true":
        return "none"
    name = environ.get("OTEL_TRACES_EXPORTER", "").strip().lower()
    if not name:
        endpoints = ("OTEL_EXPORTER_OTLP_ENDPOINT", "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT")
        return "otlp" if any(environ.get(key) for key in endpoints) else "none"
    if name not in EXPORTERS:
        raise TracingError(
            f"OTEL_TRACES_EXPORTER={name!r} is not supported; valid: {', '.join(EXPORTERS)}"
        )
    return name


def make_exporter(name: str) -> Any:
    """The ``SpanExporter`` called ``name`` (console | otlp); ``TracingError`` for OTLP when
    its package is not installed."""
    if name == "console":
        from opentelemetry.sdk.trace.export import ConsoleSpanExporter

        return ConsoleSpanExporter(out=sys.stdout)  # stdout as it is now, not at import
    if name == "otlp":
        try:
            from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
        except ImportError as exc:
            raise TracingError(
                f"OTEL_TRACES_EXPORTER=otlp needs the {OTLP_PACKAGE} package: pip install "
                f"{OTLP_PACKAGE}, or choose console or none"
            ) from exc
        return OTLPSpanExporter()
    raise TracingError(f"no exporter {name!r}; valid: console, otlp")


def otel_environment(environ: Mapping[str, str] | None = None) -> dict[str, str]:
    """The OTEL_* variables of ``environ`` (default: the process's), for processes started
    elsewhere (Ray replicas) to trace as this one does."""
    environ = os.environ if environ is None else environ
    return {name: value for name, value in environ.items() if name.startswith("OTEL_")}


def configure_from_environment(environ: Mapping[str, str] | None = None) -> str:
    """Tracing as ``environ`` (default: the process's environment) asks; returns the exporter's
    name (``none``: tracing stays off). ``TracingError`` when it cannot be done."""
    name = exporter_name(os.environ if environ is None else environ)
    if name == "none":
        return name
    use_exporter(make_exporter(name))
    log.info("traces are on: exported to %s", name)
    return name


@contextmanager
def span(name: str, attributes: Mapping[str, AttributeValue] | None = None) -> Iterator[Span]:
    """A child span of the current one, current for the body of the ``with``; an exception
    leaving it is recorded and sets its status to error. Off: the API's invalid span, the
    context left as it is."""
    if _tracer is _NO_OP:
        yield trace.INVALID_SPAN
        return
    with _tracer.start_as_current_span(name, attributes=attributes) as current:
        yield current


def current_context() -> Context | None:
    """The caller's context, to hand to work that runs elsewhere (another task or thread);
    None while tracing is off."""
    return otel_context.get_current() if enabled() else None


def wall_ns(perf_counter: float, offset_ns: int | None = None) -> int:
    """A ``time.perf_counter()`` reading as nanoseconds since the epoch (span times);
    ``offset_ns``: ``clock_offset_ns()`` read once for several readings, so that their
    differences stay exact."""
    offset_ns = clock_offset_ns() if offset_ns is None else offset_ns
    return round(perf_counter * 1e9) + offset_ns


def clock_offset_ns() -> int:
    """Nanoseconds from the ``perf_counter`` clock to the epoch's, now."""
    return time.time_ns() - time.perf_counter_ns()


def record(
    name: str,
    parent: Context,
    started: float,
    ended: float,
    attributes: Mapping[str, AttributeValue] | None = None,
    links: Sequence[Link] = (),
    error: BaseException | None = None,
) -> Span:
    """A finished span under ``parent`` from ``started`` to ``ended`` (``perf_counter``
    readings), for work whose timing is known only afterwards; returns it (for links)."""
    offset = clock_offset_ns()
    made = _tracer.start_span(
        name,
        context=parent,
        kind=SpanKind.INTERNAL,
        attributes=attributes,
        links=links,
        start_time=wall_ns(started, offset),
    )
    if error is not None:
        fail(made, error)
    made.end(end_time=wall_ns(ended, offset))
    return made


def link_to(parent: Context) -> Link:
    """A link to the span that is current in ``parent``."""
    return Link(trace.get_current_span(parent).get_span_context())


def fail(failed: Span, error: BaseException) -> None:
    """Mark ``failed`` as ended by ``error``."""
    failed.record_exception(error)
    failed.set_status(Status(StatusCode.ERROR, f"{type(error).__name__}: {error}"))
