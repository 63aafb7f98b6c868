"""The bounded LRU that holds computed results (heatmaps here, as the explanation routes use it)."""

from __future__ import annotations

import numpy as np
import pytest

from service.common.lru import LruCache
from tests.unit.explain.test_heatmap import make_heatmap


def test_least_recently_used_is_evicted():
    cache = LruCache(max_entries=2)
    maps = {name: make_heatmap(np.full((2, 2), i, np.float32)) for i, name in enumerate("abc")}
    cache.put("a", maps["a"])
    cache.put("b", maps["b"])
    assert cache.get("a") is maps["a"]  # a is now the most recent
    cache.put("c", maps["c"])
    assert len(cache) == 2
    assert cache.get("b") is None and cache.get("a") is maps["a"] and cache.get("c") is maps["c"]
    assert (cache.hits, cache.misses) == (3, 1)


def test_zero_entries_disables_and_negative_is_rejected():
    cache = LruCache(max_entries=0)
    cache.put("k", make_heatmap(np.zeros((2, 2))))
    assert len(cache) == 0
    with pytest.raises(ValueError, match="max_entries"):
        LruCache(max_entries=-1)


def test_bytes_are_bounded_too():
    # a 150 x 150 map is 90,000 bytes of values plus 8 of logits
    maps = [make_heatmap(np.full((150, 150), i / 10, np.float32)) for i in range(5)]
    size = 150 * 150 * 4 + 8
    cache = LruCache(max_entries=64, max_bytes=3 * size)

    for i, heatmap in enumerate(maps):
        cache.put(str(i), heatmap)

    assert len(cache) == 3 and cache.bytes == 3 * size
    assert cache.get("1") is None and cache.get("4") is maps[4]


def test_a_value_larger_than_the_whole_bound_is_not_kept_and_replacing_counts_once():
    cache = LruCache(max_entries=4, max_bytes=1000)
    cache.put("big", make_heatmap(np.zeros((20, 20), np.float32)))  # 1608 bytes
    small = make_heatmap(np.zeros((10, 10), np.float32))  # 408 bytes
    cache.put("small", small)
    cache.put("small", small)

    assert cache.get("big") is None
    assert (len(cache), cache.bytes) == (1, 408)
