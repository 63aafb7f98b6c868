"""``/metrics`` of a Ray Serve app: the Prometheus text of every replica's app, merged.

Each replica's app keeps its own registry (the same metric names as the single-process
service). Replicas cannot be addressed one by one through a deployment handle, so each one
publishes its registry's text to ``MetricsBoard`` (one small deployment, i.e. one named Ray
actor of the app) every few seconds and withdraws it when it stops; entries not refreshed for
``ttl_s`` (a replica that died) expire. The gateway merges what the board holds: counters,
histograms and gauges are summed per label set (``celebxai_ready`` then counts the ready
apps), ``*_created`` takes the earliest, and info metrics appear once.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable

from prometheus_client import generate_latest
from prometheus_client.metrics_core import Metric
from prometheus_client.parser import text_string_to_metric_families
from prometheus_client.samples import Sample

# Every second, so that /metrics lags the replicas by about a second (a client comparing its own
# counts with the server's waits that long); an entry lives on for a while after its replica
# stops publishing (a busy or restarting replica), then its samples leave the sums.
PUBLISH_EVERY_S = 1.0
TTL_S = 15.0


def merge_expositions(texts: Iterable[str]) -> str:
    """One Prometheus text exposition with the samples of all ``texts`` combined, written as
    ``prometheus_client`` writes a registry (so the same names as one app's ``/metrics``)."""
    families: dict[str, Metric] = {}
    values: dict[str, dict[tuple[str, tuple[tuple[str, str], ...]], float]] = {}
    for text in texts:
        for family in text_string_to_metric_families(text):
            families.setdefault(family.name, family)
            merged = values.setdefault(family.name, {})
            for sample in family.samples:
                key = (sample.name, tuple(sorted(sample.labels.items())))
                merged[key] = _combine(family.type, sample, merged.get(key))
    combined = []
    for name, family in families.items():
        metric = Metric(name, family.documentation, family.type, family.unit)
        for (sample_name, labels), value in values[name].items():
            metric.add_sample(sample_name, dict(labels), value)
        combined.append(metric)
    return generate_latest(_Collected(combined)).decode()


class _Collected:
    """What ``generate_latest`` reads: something with ``collect()``."""

    def __init__(self, metrics: list[Metric]) -> None:
        self.metrics = metrics

    def collect(self) -> list[Metric]:
        return self.metrics


def _combine(kind: str, sample: Sample, previous: float | None) -> float:
    if previous is None:
        return sample.value
    if sample.name.endswith("_created"):
        return min(previous, sample.value)
    if kind == "info" or sample.name.endswith("_info"):  # the text format writes info as gauge
        return max(previous, sample.value)
    return previous + sample.value


class MetricsBoard:
    """The latest registry text of every replica, by replica id; old entries expire."""

    def __init__(self, ttl_s: float = TTL_S, clock: Callable[[], float] = time.monotonic) -> None:
        self.ttl_s = ttl_s
        self.clock = clock
        self._entries: dict[str, tuple[float, str]] = {}

    def publish(self, replica: str, text: str) -> None:
        self._entries[replica] = (self.clock(), text)

    def withdraw(self, replica: str) -> None:
        self._entries.pop(replica, None)

    def snapshot(self, exclude: str = "") -> list[str]:
        """The texts of the live replicas except ``exclude`` (whose caller has a fresher one)."""
        now = self.clock()
        self._entries = {
            replica: (at, text)
            for replica, (at, text) in self._entries.items()
            if now - at <= self.ttl_s
        }
        return [text for replica, (_, text) in self._entries.items() if replica != exclude]
