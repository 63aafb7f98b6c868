"""GET /metrics: Prometheus text with request, latency, batch and model series."""

from __future__ import annotations

from prometheus_client.parser import text_string_to_metric_families


def _samples(client) -> dict[str, list]:
    response = client.get("/metrics")
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/plain")
    families = text_string_to_metric_families(response.text)
    return {family.name: family.samples for family in families}


def _value(samples, name: str, **labels: str) -> float:
    return sum(
        sample.value
        for sample in samples
        if sample.name == name and all(sample.labels.get(k) == v for k, v in labels.items())
    )


def test_metrics_count_requests_by_endpoint_and_status(client, post_image, face_bytes):
    before = _samples(client)
    post_image(face_bytes)
    post_image(b"")
    client.get("/nowhere/at/all")

    after = _samples(client)

    requests = "celebxai_http_requests_total"
    for labels in (
        {"endpoint": "/predict", "method": "POST", "status": "200"},
        {"endpoint": "/predict", "method": "POST", "status": "400"},
        {"endpoint": "unmatched", "method": "GET", "status": "404"},
    ):
        grew = _value(after["celebxai_http_requests"], requests, **labels) - _value(
            before["celebxai_http_requests"], requests, **labels
        )
        assert grew == 1, labels
    latency = after["celebxai_http_request_duration_seconds"]
    assert _value(latency, "celebxai_http_request_duration_seconds_count", endpoint="/predict") >= 2


def test_metrics_report_batches_readiness_and_model(client, post_image, face_bytes, serving_model):
    post_image(face_bytes)

    samples = _samples(client)

    assert _value(samples["celebxai_batch_size"], "celebxai_batch_size_count") >= 1
    assert _value(samples["celebxai_batch_size"], "celebxai_batch_size_sum") >= 1
    assert (
        _value(
            samples["celebxai_batch_inference_seconds"], "celebxai_batch_inference_seconds_count"
        )
        >= 1
    )
    assert _value(samples["celebxai_ready"], "celebxai_ready") == 1
    (info,) = samples["celebxai_model_info"]
    assert info.labels["name"] == serving_model.meta.name
    assert info.labels["version"] == serving_model.meta.version
    assert info.labels["provider"] == "CPUExecutionProvider"
