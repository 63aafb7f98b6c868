"""Traces as a user turns them on (``OTEL_TRACES_EXPORTER=otlp`` and an endpoint), on both
hosts: each request is one trace, its spans exported by every process that worked on it (in
Ray mode the front, the gateway and a Predict or Explain replica) to an OTLP collector in the
test process."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.image_bytes import face_png
from tests.load.harness import stop_server
from tests.scaleout.conftest import API_KEY, Service, start_service, started_ray_service
from tests.scaleout.otlp_collector import SERVER_KIND, CollectedSpan, Collector, running_collector

pytestmark = pytest.mark.ray

PREDICT_SPANS = {"decode", "face search", "preprocess", "batch wait", "inference"}
TIMEOUT_S = 120.0


@pytest.fixture(scope="module")
def collector() -> Iterator[Collector]:
    with running_collector() as collector:
        yield collector


def otel_environment(collector: Collector) -> dict[str, str]:
    return {
        "OTEL_TRACES_EXPORTER": "otlp",
        "OTEL_EXPORTER_OTLP_ENDPOINT": collector.endpoint,
        "OTEL_BSP_SCHEDULE_DELAY": "100",  # export within 0.1 s of a span's end
    }


@pytest.fixture(scope="module", params=["single", "ray"])
def host(
    request: pytest.FixtureRequest,
    collector: Collector,
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[tuple[str, Service]]:
    log_dir = tmp_path_factory.mktemp(f"traces-{request.param}")
    environ = otel_environment(collector)
    if request.param == "ray":
        with started_ray_service(log_dir, environ) as service:
            yield request.param, service
        return
    service = start_service(log_dir, [], environ)
    try:
        yield request.param, service
    finally:
        stop_server(service.process)


@pytest.fixture(scope="module")
def face(celebs_root: Path) -> bytes:
    return face_png(celebs_root, "tom_hanks")


def trace_of(spans: list[CollectedSpan], trace_id: str) -> list[CollectedSpan]:
    return [span for span in spans if span.trace_id == trace_id]


def check_one_tree(members: list[CollectedSpan]) -> CollectedSpan:
    """The root of ``members``: exactly one span without a parent among them (the first
    process's server span); every other span's parent is one of them."""
    ids = {span.span_id for span in members}
    roots = [span for span in members if span.parent_id not in ids]
    assert len(roots) == 1, [(span.name, span.parent_id) for span in roots]
    return roots[0]


def processes(members: list[CollectedSpan]) -> set[str]:
    return {str(span.resource["service.instance.id"]) for span in members}


def post(service: Service, path: str, face: bytes, traceparent: str) -> httpx.Response:
    return httpx.post(
        f"{service.url}{path}",
        files={"file": ("face.png", face, "image/png")},
        headers={"X-API-Key": API_KEY, "traceparent": traceparent},
        timeout=TIMEOUT_S,
    )


def test_predict_is_one_trace_across_processes(host, collector, face):
    name, service = host
    trace_id = f"{1 if name == 'single' else 2:032x}"
    caller = "00f067aa0ba902b7"

    response = post(service, "/predict", face, f"00-{trace_id}-{caller}-01")

    assert response.status_code == 200, response.text
    servers = 1 if name == "single" else 3  # Ray: the front, the gateway, a Predict replica

    def complete(spans: list[CollectedSpan]) -> bool:
        members = trace_of(spans, trace_id)
        named = {span.name for span in members}
        return PREDICT_SPANS <= named and sum(s.kind == SERVER_KIND for s in members) >= servers

    members = trace_of(collector.wait_for(complete), trace_id)
    root = check_one_tree(members)
    assert root.parent_id == caller  # the caller's traceparent continued
    assert {span.resource["service.name"] for span in members} == {"celebxai"}
    server_spans = [span for span in members if span.kind == SERVER_KIND]
    assert len(server_spans) == servers
    assert len(processes(members)) == servers  # each server span from a process of its own
    assert sum(span.name == "inference" for span in members) == 1
    if name == "ray":
        (gateway,) = [span for span in server_spans if span.parent_id == root.span_id]
        (replica,) = [span for span in server_spans if span.parent_id == gateway.span_id]
        assert root.name == "POST"  # the front knows no routes
        assert gateway.name == replica.name == "POST /predict"
        stages = [span for span in members if span.name in PREDICT_SPANS]
        assert processes(stages) == processes([replica])


def test_an_explanation_is_one_trace_with_its_batches(host, collector, face):
    name, service = host
    trace_id = f"{3 if name == 'single' else 4:032x}"
    query = "window=40&stride=20&batch_size=8&quality=false&format=png"

    response = post(
        service, f"/explain/occlusion?{query}", face, f"00-{trace_id}-00f067aa0ba902b7-01"
    )

    assert response.status_code == 200, response.text

    def complete(spans: list[CollectedSpan]) -> bool:
        return any(span.name == "render" for span in trace_of(spans, trace_id))

    members = trace_of(collector.wait_for(complete), trace_id)
    check_one_tree(members)
    (explain,) = [span for span in members if span.name == "explain"]
    assert explain.attributes["celebxai.explain.method"] == "occlusion"
    batches = [span for span in members if span.name == "explanation batch"]
    assert len(batches) == explain.attributes["celebxai.explain.passes"] > 2
    assert {span.parent_id for span in batches} == {explain.span_id}
    assert len(processes(members)) == (1 if name == "single" else 3)
