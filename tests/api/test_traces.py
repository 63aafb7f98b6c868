"""Traces of real requests (service.observability.tracing): one trace per request, its spans
exported through the same ``use_exporter`` that ``OTEL_TRACES_EXPORTER`` turns on, here into
an in-memory exporter."""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor

import pytest
from opentelemetry.sdk.trace import ReadableSpan
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind, StatusCode

from service.observability import tracing
from tests.api.conftest import API_KEY

PREDICT_SPANS = {"decode", "face search", "preprocess", "batch wait", "inference"}
Traced = Callable[[], list[ReadableSpan]]


@pytest.fixture()
def traced() -> Iterator[Traced]:
    """Tracing on for the test; calling the fixture gives the spans finished so far."""
    exporter = InMemorySpanExporter()
    tracing.use_exporter(exporter)

    def finished() -> list[ReadableSpan]:
        assert tracing.flush()
        return list(exporter.get_finished_spans())

    try:
        yield finished
    finally:
        tracing.stop()


def server_spans(spans: Sequence[ReadableSpan]) -> list[ReadableSpan]:
    return [span for span in spans if span.kind is SpanKind.SERVER]


def one_trace(spans: Sequence[ReadableSpan], name: str) -> list[ReadableSpan]:
    """The spans of the one request whose server span is ``name``, each checked to descend
    from that server span."""
    (server,) = [span for span in server_spans(spans) if span.name == name]
    trace_id = server.context.trace_id
    members = [span for span in spans if span.context.trace_id == trace_id]
    by_id = {span.context.span_id: span for span in members}
    for span in members:
        ancestor = span
        while ancestor is not server:
            assert ancestor.parent is not None, f"{span.name} is not below {name}"
            ancestor = by_id[ancestor.parent.span_id]
    return members


def named(spans: Sequence[ReadableSpan], name: str) -> list[ReadableSpan]:
    return [span for span in spans if span.name == name]


def test_predict_is_one_trace_with_a_span_per_stage(post_image, face_bytes, traced):
    response = post_image(face_bytes)

    assert response.status_code == 200, response.text
    spans = traced()
    assert len(server_spans(spans)) == 1
    members = one_trace(spans, "POST /predict")
    assert len(members) == len(spans)
    assert PREDICT_SPANS <= {span.name for span in members}
    (server,) = server_spans(spans)
    assert server.attributes["http.route"] == "/predict"
    assert server.attributes["http.response.status_code"] == 200
    assert server.status.status_code is StatusCode.UNSET
    (decode,) = named(members, "decode")
    width, height = response.json()["image"]["width"], response.json()["image"]["height"]
    assert decode.attributes["celebxai.image.width"] == width
    assert decode.attributes["celebxai.image.height"] == height
    assert decode.attributes["celebxai.image.bytes"] == len(face_bytes)
    (search,) = named(members, "face search")
    assert search.attributes["celebxai.faces.found"] == len(response.json()["faces"])
    (wait,) = named(members, "batch wait")
    (inference,) = named(members, "inference")
    assert abs(wait.end_time - inference.start_time) < 1_000_000  # the run starts as it ends
    assert inference.attributes["celebxai.batch.size"] >= 1
    stages = [named(members, name)[0] for name in ("decode", "face search", "preprocess")]
    assert [span.start_time for span in stages] == sorted(span.start_time for span in stages)
    assert all(server.start_time <= span.start_time for span in members)
    assert all(span.end_time <= server.end_time for span in members)


def test_no_attribute_holds_the_api_key_or_image_data(post_image, face_bytes, traced):
    post_image(face_bytes)

    for span in traced():
        for value in (span.attributes or {}).values():
            assert not isinstance(value, bytes)
            assert API_KEY not in str(value)


def test_concurrent_requests_make_separate_traces(post_image, face_bytes, traced):
    with ThreadPoolExecutor(2) as pool:
        responses = list(pool.map(lambda _: post_image(face_bytes), range(2)))

    assert [response.status_code for response in responses] == [200, 200]
    spans = traced()
    servers = server_spans(spans)
    assert len(servers) == 2
    assert servers[0].context.trace_id != servers[1].context.trace_id
    for server in servers:
        members = [span for span in spans if span.context.trace_id == server.context.trace_id]
        assert PREDICT_SPANS <= {span.name for span in members}
        (inference,) = named(members, "inference")
        # a batch the two shared links each request's inference span to the other request
        shared = inference.attributes["celebxai.batch.size"] == 2
        assert len(inference.links) == (1 if shared else 0)


def test_an_incoming_traceparent_is_continued(post_image, face_bytes, traced):
    trace_id, parent_id = "4bf92f3577b34da6a3ce929d0e0e4736", "00f067aa0ba902b7"

    response = post_image(face_bytes, headers={"traceparent": f"00-{trace_id}-{parent_id}-01"})

    assert response.status_code == 200
    spans = traced()
    (server,) = server_spans(spans)
    assert server.context.trace_id == int(trace_id, 16)
    assert server.parent is not None and server.parent.span_id == int(parent_id, 16)
    assert {span.context.trace_id for span in spans} == {int(trace_id, 16)}


def test_a_refused_upload_closes_its_spans_with_an_error(post_image, traced):
    response = post_image(b"not an image at all", filename="x.png")

    assert response.status_code == 415
    spans = traced()
    members = one_trace(spans, "POST /predict")
    (server,) = server_spans(members)
    assert server.status.status_code is StatusCode.ERROR
    assert server.attributes["http.response.status_code"] == 415
    assert server.attributes["error.type"] == "415"
    (decode,) = named(members, "decode")
    assert decode.status.status_code is StatusCode.ERROR
    assert [event.name for event in decode.events] == ["exception"]
    assert not named(members, "face search")


def test_an_unknown_route_is_traced_as_a_404(client, traced):
    assert client.get("/no/such/route").status_code == 404

    (server,) = server_spans(traced())
    assert server.name == "GET"
    assert server.status.status_code is StatusCode.ERROR
    assert "http.route" not in server.attributes


def test_occlusion_traces_each_batch_and_the_rendering(post_image, face_bytes, traced):
    # parameters of this test alone: the map is computed, not taken from the explanation cache
    query = "window=40&stride=20&batch_size=8&quality=false&format=png"

    response = post_image(face_bytes, path=f"/explain/occlusion?{query}")

    assert response.status_code == 200, response.text
    members = one_trace(traced(), "POST /explain/{method}")
    (explain,) = named(members, "explain")
    assert explain.attributes["celebxai.explain.method"] == "occlusion"
    assert explain.attributes["celebxai.explain.cached"] is False
    batches = named(members, "explanation batch")
    # every forward pass of the method (its prediction and the occluded images) has its span
    assert len(batches) == explain.attributes["celebxai.explain.passes"] > 2
    assert all(span.parent.span_id == explain.context.span_id for span in batches)
    assert all(1 <= span.attributes["celebxai.batch.size"] <= 8 for span in batches)
    assert sum(span.attributes["celebxai.batch.size"] for span in batches) > 8
    (render,) = named(members, "render")
    assert render.attributes["celebxai.render.format"] == "png"
    assert render.start_time >= explain.end_time
    assert PREDICT_SPANS - {"batch wait", "inference"} <= {span.name for span in members}


def test_gradient_counts_its_twin_pass_in_its_explain_span(cold_client, face_bytes, traced):
    # an app of its own: the map is computed, not taken from the session's explanation cache
    response = cold_client.post(
        "/explain/gradient?quality=false&format=json",
        files={"file": ("face.png", face_bytes, "image/png")},
    )

    assert response.status_code == 200, response.text
    members = one_trace(traced(), "POST /explain/{method}")
    (explain,) = named(members, "explain")
    assert explain.attributes["celebxai.explain.method"] == "gradient"
    assert explain.attributes["celebxai.explain.cached"] is False
    # the twin's forward and backward pass, and the prediction on the inference thread
    assert explain.attributes["celebxai.explain.passes"] == 2
    assert len(named(members, "explanation batch")) == 1
    (render,) = named(members, "render")
    assert render.attributes["celebxai.render.format"] == "json"


def test_console_exporter_from_the_environment(post_image, face_bytes, capsys):
    assert tracing.configure_from_environment({"OTEL_TRACES_EXPORTER": "console"}) == "console"
    try:
        assert post_image(face_bytes).status_code == 200
        assert tracing.flush()
    finally:
        tracing.stop()

    printed = capsys.readouterr().out
    assert '"name": "POST /predict"' in printed
    assert '"service.name": "celebxai"' in printed


def test_nothing_is_recorded_while_tracing_is_off(post_image, face_bytes):
    assert not tracing.enabled()

    assert post_image(face_bytes).status_code == 200

    assert not tracing.flush()  # no provider: nothing was made to export
