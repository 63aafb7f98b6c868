"""Prometheus metrics, one registry per app (so several apps can live in one test process).

``ServiceMetrics`` owns the registry and the collectors; ``MetricsMiddleware`` counts every HTTP
request by route template, method and status, and times it.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable
from typing import NamedTuple

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    Info,
    generate_latest,
)
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.metrics_core import Metric
from prometheus_client.registry import Collector
from starlette.types import ASGIApp, Message, Receive, Scope, Send

PREFIX = "celebxai"
LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30)
BATCH_SIZE_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256)
PIXEL_BUCKETS = (1e4, 4e4, 1.6e5, 3.2e5, 6.4e5, 1.28e6, 2.56e6, 1e7, 4e7)
UNMATCHED = "unmatched"


class ServiceMetrics:
    """The collectors of one app; ``render()`` gives the Prometheus text exposition."""

    content_type = CONTENT_TYPE_LATEST

    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        labels = ("endpoint", "method", "status")
        self.requests = Counter(
            f"{PREFIX}_http_requests",
            "HTTP requests answered, by route template, method and status",
            labels,
            registry=self.registry,
        )
        self.latency = Histogram(
            f"{PREFIX}_http_request_duration_seconds",
            "time from request start to the end of the response",
            labels,
            buckets=LATENCY_BUCKETS,
            registry=self.registry,
        )
        self.in_flight = Gauge(
            f"{PREFIX}_http_requests_in_flight",
            "HTTP requests being processed",
            registry=self.registry,
        )
        self.batch_size = Histogram(
            f"{PREFIX}_batch_size",
            "inputs per model run of the dynamic batcher",
            buckets=BATCH_SIZE_BUCKETS,
            registry=self.registry,
        )
        self.batch_inference = Histogram(
            f"{PREFIX}_batch_inference_seconds",
            "duration of one batched model run",
            buckets=LATENCY_BUCKETS,
            registry=self.registry,
        )
        self.batch_wait = Histogram(
            f"{PREFIX}_batch_queue_wait_seconds",
            "how long the oldest input of a batch waited before the batch ran",
            buckets=LATENCY_BUCKETS,
            registry=self.registry,
        )
        self.explanation_batches = Counter(
            f"{PREFIX}_explanation_batches",
            "forward passes run for explanations and syntheses: perturbation batches on the "
            "ONNX model and passes of the twin (work cancelled with its client stops adding)",
            registry=self.registry,
        )
        self.verdicts = Counter(
            f"{PREFIX}_explanation_verdicts",
            "quality verdicts given with explanation answers (and by POST /explain/evaluate, "
            "method=evaluate), by method and verdict",
            ("method", "verdict"),
            registry=self.registry,
        )
        self.model_info = Info(f"{PREFIX}_model", "the loaded model bundle", registry=self.registry)
        self.models_loaded = Gauge(
            f"{PREFIX}_models_loaded",
            "model bundles in memory: the default, those loaded on first use (model=), and "
            "unloaded ones whose last requests are still running",
            registry=self.registry,
        )
        self.model_loads = Counter(
            f"{PREFIX}_model_loads",
            "model bundles loaded on first use (the default excluded), by model and outcome "
            "(ok; failed: its load-time checks failed)",
            ("model", "outcome"),
            registry=self.registry,
        )
        self.model_evictions = Counter(
            f"{PREFIX}_model_evictions",
            "model bundles unloaded as least recently used beyond max_loaded_models, by model",
            ("model",),
            registry=self.registry,
        )
        self.ready = Gauge(
            f"{PREFIX}_ready",
            "1 when the model is loaded, checked and warmed up, else 0",
            registry=self.registry,
        )

    def observe_batch(self, size: int, inference_s: float, wait_s: float) -> None:
        self.batch_size.observe(size)
        self.batch_inference.observe(inference_s)
        self.batch_wait.observe(wait_s)

    def watch(self, source: Callable[[], Collector | None]) -> None:
        """At every scrape, also collect whatever ``source()`` returns then (None: nothing):
        for collectors made after the registry, such as the face finder's, made with the model."""
        self.registry.register(_Deferred(source))

    def render(self) -> bytes:
        return generate_latest(self.registry)


class _Deferred(Collector):
    """Collects whatever ``source()`` returns at scrape time."""

    def __init__(self, source: Callable[[], Collector | None]) -> None:
        self.source = source

    def collect(self) -> Iterable[Metric]:
        collector = self.source()
        return collector.collect() if collector is not None else ()


class FaceSearchSize(NamedTuple):
    """What the face search cache holds now, and its bounds."""

    entries: int
    entries_max: int
    bytes: int
    bytes_max: int


class FaceSearchMetrics(Collector):
    """What face detection cost, per request: seconds (waiting for a detector, or for the same
    photo's search in progress, included) and pixels searched (every pass, padding and
    enlargement included; 0 for a result the cache held). The cache's lookups by outcome
    (``hit``, ``shared``: waited for the same pixels' search in progress, ``miss``: searched)
    and, read at scrape time from ``cache_size`` when set, its entries and bytes. Kept by the
    face finder, exposed through ``ServiceMetrics.watch``."""

    def __init__(self) -> None:
        self.seconds = Histogram(
            f"{PREFIX}_face_detection_seconds",
            "time one request spent finding faces (all passes, waiting for a detector or for "
            "the same photo's search in progress included)",
            buckets=LATENCY_BUCKETS,
            registry=None,
        )
        self.pixels = Histogram(
            f"{PREFIX}_face_search_pixels",
            "pixels the face detector searched for one request (all passes; 0 for a cached result)",
            buckets=PIXEL_BUCKETS,
            registry=None,
        )
        self.lookups = Counter(
            f"{PREFIX}_face_search_cache_lookups",
            "face searches asked of the cache, by result: hit (held), shared (waited for the "
            "same pixels' search in progress), miss (searched)",
            ["result"],
            registry=None,
        )
        for result in ("hit", "shared", "miss"):
            self.lookups.labels(result)
        self.cache_size: Callable[[], FaceSearchSize] | None = None

    def observe(self, pixels: int, seconds: float, lookup: str = "miss") -> None:
        self.pixels.observe(pixels)
        self.seconds.observe(seconds)
        self.lookups.labels(lookup).inc()

    def collect(self) -> Iterable[Metric]:
        size = self.cache_size() if self.cache_size is not None else FaceSearchSize(0, 0, 0, 0)
        gauges = []
        for name, value, text in (
            ("entries", size.entries, "face search results held by the cache"),
            ("entries_max", size.entries_max, "most face search results the cache holds (0: off)"),
            ("bytes", size.bytes, "bytes of arrays held by the face search cache"),
            ("bytes_max", size.bytes_max, "most bytes the face search cache holds"),
        ):
            gauge = GaugeMetricFamily(f"{PREFIX}_face_search_cache_{name}", text)
            gauge.add_metric([], value)
            gauges.append(gauge)
        return [
            *self.seconds.collect(),
            *self.pixels.collect(),
            *self.lookups.collect(),
            *gauges,
        ]


class MetricsMiddleware:
    """Pure ASGI middleware: counts and times every HTTP request of ``app``."""

    def __init__(self, app: ASGIApp, metrics: ServiceMetrics) -> None:
        self.app = app
        self.metrics = metrics

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        status = ResponseStatus(send)
        self.metrics.in_flight.inc()
        try:
            await self.app(scope, receive, status.send)
        finally:
            self.metrics.in_flight.dec()
            labels = (route_template(scope), scope["method"], str(status.code))
            self.metrics.requests.labels(*labels).inc()
            self.metrics.latency.labels(*labels).observe(time.perf_counter() - started)


class ResponseStatus:
    """``send`` that notes the status of the response passing through it: ``code`` is 500
    (what the client gets if the app fails before starting a response) until one starts."""

    def __init__(self, send: Send) -> None:
        self._send = send
        self.code = 500

    async def send(self, message: Message) -> None:
        if message["type"] == "http.response.start":
            self.code = message["status"]
        await self._send(message)


def route_template(scope: Scope) -> str:
    """The path template of the route that served ``scope`` (bounded label values).

    The router records the matched route in the scope; no route (a 404) gives ``unmatched``.
    """
    return getattr(scope.get("route"), "path", UNMATCHED)
