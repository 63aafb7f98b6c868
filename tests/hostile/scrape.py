"""Read the service's own counters from ``/metrics``: the hostile tests and the benchmarks
judge cost through them rather than through wall-clock time."""

from __future__ import annotations

import urllib.request

from prometheus_client.parser import text_string_to_metric_families
from prometheus_client.samples import Sample


def metric_samples(url: str, family: str) -> list[Sample]:
    """Every sample of metric ``family`` (its name without ``_total``/``_bucket``/... suffixes)
    that the service at ``url`` exposes now; empty when it has none."""
    with urllib.request.urlopen(f"{url}/metrics", timeout=30) as response:
        text = response.read().decode()
    for metric in text_string_to_metric_families(text):
        if metric.name == family:
            return list(metric.samples)
    return []
