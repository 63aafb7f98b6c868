"""Every result cache's entries and bytes, and their bounds, are in /metrics."""

from __future__ import annotations

import numpy as np
from fastapi.testclient import TestClient
from prometheus_client import CollectorRegistry, generate_latest

from service.app import create_app
from service.common.lru import LruCache
from service.observability.cache_metrics import CacheCollector
from service.settings import Settings
from tests.unit.explain.test_heatmap import make_heatmap


def test_the_gauges_follow_the_cache():
    cache = LruCache(max_entries=8, max_bytes=4096)
    registry = CollectorRegistry()
    registry.register(CacheCollector({"maps": cache}))
    cache.put("k", make_heatmap(np.zeros((10, 10), np.float32)))  # 408 bytes

    text = generate_latest(registry).decode()

    assert 'celebxai_cache_entries{cache="maps"} 1.0' in text
    assert 'celebxai_cache_bytes{cache="maps"} 408.0' in text
    assert 'celebxai_cache_entries_max{cache="maps"} 8.0' in text
    assert 'celebxai_cache_bytes_max{cache="maps"} 4096.0' in text


def test_the_app_exports_its_result_caches(tmp_path):
    """The lifespan makes the app's caches before loading the bundle: exported even when the
    bundle cannot be served (here: an empty folder)."""
    with TestClient(create_app(Settings(model=tmp_path))) as client:
        text = client.get("/metrics").text

    for cache in ("explanations", "grades", "syntheses"):
        assert f'celebxai_cache_bytes_max{{cache="{cache}"}}' in text
        assert f'celebxai_cache_entries_max{{cache="{cache}"}}' in text
