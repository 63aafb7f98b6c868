"""The result caches' sizes in ``/metrics``: entries and bytes held, and their bounds.

A collector, read at scrape time, so the caches need not know about Prometheus; every cache
is an ``LruCache`` (bounded in entries and in bytes).
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping

from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector

from service.common.lru import LruCache
from service.observability.metrics import PREFIX


class CacheCollector(Collector):
    """Gauges ``celebxai_cache_entries``, ``celebxai_cache_bytes`` and their ``_max`` bounds,
    labelled by cache name."""

    def __init__(self, caches: Mapping[str, LruCache]) -> None:
        self.caches = dict(caches)

    def collect(self) -> Iterator[GaugeMetricFamily]:
        gauges = {
            "entries": GaugeMetricFamily(
                f"{PREFIX}_cache_entries", "results held by a cache", labels=["cache"]
            ),
            "entries_max": GaugeMetricFamily(
                f"{PREFIX}_cache_entries_max", "most results a cache holds", labels=["cache"]
            ),
            "bytes": GaugeMetricFamily(
                f"{PREFIX}_cache_bytes", "bytes of arrays held by a cache", labels=["cache"]
            ),
            "bytes_max": GaugeMetricFamily(
                f"{PREFIX}_cache_bytes_max", "most bytes a cache holds", labels=["cache"]
            ),
        }
        for name, cache in self.caches.items():
            gauges["entries"].add_metric([name], len(cache))
            gauges["entries_max"].add_metric([name], cache.max_entries)
            gauges["bytes"].add_metric([name], cache.bytes)
            gauges["bytes_max"].add_metric([name], cache.max_bytes)
        yield from gauges.values()
