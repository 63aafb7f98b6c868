"""Merging the registries of several replicas into one ``/metrics`` (``metrics_merge``)."""

from __future__ import annotations

import asyncio
import re

from prometheus_client.parser import text_string_to_metric_families

from service.observability.metrics import ServiceMetrics
from service.scaleout.metrics_merge import MetricsBoard, merge_expositions
from service.scaleout.publisher import MetricsPublisher


def _values(text: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    return {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }


def _replica(predictions: int, latency_s: float, ready: bool) -> str:
    metrics = ServiceMetrics()
    for _ in range(predictions):
        metrics.requests.labels("/predict", "POST", "200").inc()
        metrics.latency.labels("/predict", "POST", "200").observe(latency_s)
    metrics.requests.labels("/readyz", "GET", "200").inc()
    metrics.ready.set(1 if ready else 0)
    metrics.model_info.info({"name": "celebs8", "version": "1.0.0"})
    return metrics.render().decode()


def test_counters_histograms_and_gauges_are_summed_per_label_set():
    first, second = _replica(3, 0.02, True), _replica(2, 0.3, False)

    merged = _values(merge_expositions([first, second]))

    predict = (("endpoint", "/predict"), ("method", "POST"), ("status", "200"))
    assert merged[("celebxai_http_requests_total", predict)] == 5
    readyz = (("endpoint", "/readyz"), ("method", "GET"), ("status", "200"))
    assert merged[("celebxai_http_requests_total", readyz)] == 2
    assert merged[("celebxai_http_request_duration_seconds_count", predict)] == 5
    assert merged[("celebxai_http_request_duration_seconds_sum", predict)] == 3 * 0.02 + 2 * 0.3
    bucket = (*predict[:1], ("le", "0.025"), *predict[1:])
    assert merged[("celebxai_http_request_duration_seconds_bucket", bucket)] == 3
    assert merged[("celebxai_ready", ())] == 1


def test_info_appears_once_and_created_is_the_earliest():
    first, second = _replica(1, 0.01, True), _replica(1, 0.01, True)
    labels = (("name", "celebs8"), ("version", "1.0.0"))

    merged_text = merge_expositions([first, second])
    merged = _values(merged_text)

    assert merged[("celebxai_model_info", labels)] == 1
    created = [v for (name, _), v in _values(first).items() if name.endswith("_created")]
    created += [v for (name, _), v in _values(second).items() if name.endswith("_created")]
    merged_created = [v for (name, _), v in merged.items() if name.endswith("_created")]
    assert min(merged_created) == min(created)
    types = re.findall(r"^# TYPE .*$", merged_text, re.M)
    assert sorted(types) == sorted(set(types)) == sorted(re.findall(r"^# TYPE .*$", first, re.M))


def test_one_exposition_merges_to_the_same_samples():
    text = _replica(4, 0.5, True)

    assert _values(merge_expositions([text])) == _values(text)


def test_board_expires_replicas_that_stopped_publishing():
    now = [0.0]
    board = MetricsBoard(ttl_s=15, clock=lambda: now[0])
    board.publish("Explain#a", "a")
    board.publish("Explain#b", "b")
    board.publish("Gateway#g", "g")
    board.withdraw("Explain#b")
    assert board.snapshot(exclude="Gateway#g") == ["a"]

    now[0] = 10.0
    board.publish("Gateway#g", "g2")
    now[0] = 20.0  # a died 20 s ago; g published 10 s ago
    assert board.snapshot() == ["g2"]


def test_a_publisher_stopped_as_its_publish_completes_stops_and_withdraws():
    """The replica stops in the same turn of the loop as the board answers a publish call:
    ``stop`` returns and withdraws the replica's samples (``asyncio.wait_for`` on Python 3.11
    dropped that cancellation: the publisher went on, and ``stop`` waited for ever)."""

    async def scenario() -> None:
        loop = asyncio.get_running_loop()
        answers: list[asyncio.Future[None]] = []
        withdrawn: list[str] = []

        async def publish(replica: str, text: str) -> None:  # the board's publish.remote(...)
            answers.append(loop.create_future())
            await answers[-1]

        async def withdraw(replica: str) -> None:
            withdrawn.append(replica)

        publisher = MetricsPublisher("Explain#1", lambda: "# metrics\n", publish, withdraw)
        publisher.start()
        for _ in range(5):
            await asyncio.sleep(0)  # it waits for the board's answer
        assert len(answers) == 1
        answers[0].set_result(None)  # the board answers...
        stopping = asyncio.create_task(publisher.stop())  # ...as the replica stops
        done, _ = await asyncio.wait({stopping}, timeout=5.0)
        assert done, "stop() went on waiting"
        assert withdrawn == ["Explain#1"] and len(answers) == 1

    asyncio.run(scenario())
