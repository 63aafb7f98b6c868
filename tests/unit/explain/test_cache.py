"""The bounded LRU of heatmaps and its keys."""

from __future__ import annotations

import numpy as np
import pytest

from service.explain import ExplanationCache, array_digest, cache_key

from .test_heatmap import make_heatmap


def _key(**changes: object) -> str:
    values: dict[str, object] = {
        "image_digest": "img",
        "method": "occlusion",
        "params": {"window": 24, "stride": 12},
        "target": None,
        "model_digest": "model",
    }
    values.update(changes)
    return cache_key(**values)  # type: ignore[arg-type]


def test_key_ignores_parameter_order_and_changes_with_every_part():
    assert _key() == _key(params={"stride": 12, "window": 24})
    variants = [
        _key(image_digest="other"),
        _key(method="lime"),
        _key(params={"window": 24, "stride": 8}),
        _key(target=3),
        _key(model_digest="other"),
    ]
    assert len({_key(), *variants}) == 1 + len(variants)


def test_array_digest_sees_values_shape_and_dtype():
    x = np.zeros((3, 4, 4), np.float32)
    assert array_digest(x) == array_digest(x.copy())
    y = x.copy()
    y[0, 0, 0] = 1e-6
    assert (
        len(
            {
                array_digest(x),
                array_digest(y),
                array_digest(x.reshape(3, 16)),
                array_digest(x.astype(np.float64)),
            }
        )
        == 4
    )


def test_least_recently_used_is_evicted():
    cache = ExplanationCache(max_entries=2)
    maps = {name: make_heatmap(np.full((2, 2), i, np.float32)) for i, name in enumerate("abc")}
    cache.put("a", maps["a"])
    cache.put("b", maps["b"])
    assert cache.get("a") is maps["a"]  # a is now the most recent
    cache.put("c", maps["c"])
    assert len(cache) == 2
    assert cache.get("b") is None and cache.get("a") is maps["a"] and cache.get("c") is maps["c"]
    assert (cache.hits, cache.misses) == (3, 1)


def test_get_or_compute_computes_once():
    cache = ExplanationCache(max_entries=4)
    calls = []

    def compute():
        calls.append(1)
        return make_heatmap(np.zeros((2, 2)))

    first, hit_first = cache.get_or_compute("k", compute)
    second, hit_second = cache.get_or_compute("k", compute)
    assert first is second and (hit_first, hit_second) == (False, True) and len(calls) == 1


def test_zero_entries_disables_and_negative_is_rejected():
    cache = ExplanationCache(max_entries=0)
    cache.put("k", make_heatmap(np.zeros((2, 2))))
    assert len(cache) == 0
    with pytest.raises(ValueError, match="max_entries"):
        ExplanationCache(max_entries=-1)


def test_bytes_are_bounded_too():
    # a 150 x 150 map is 90,000 bytes of values plus 8 of logits
    maps = [make_heatmap(np.full((150, 150), i / 10, np.float32)) for i in range(5)]
    size = 150 * 150 * 4 + 8
    cache = ExplanationCache(max_entries=64, max_bytes=3 * size)

    for i, heatmap in enumerate(maps):
        cache.put(str(i), heatmap)

    assert len(cache) == 3 and cache.bytes == 3 * size
    assert cache.get("1") is None and cache.get("4") is maps[4]


def test_a_value_larger_than_the_whole_bound_is_not_kept_and_replacing_counts_once():
    cache = ExplanationCache(max_entries=4, max_bytes=1000)
    cache.put("big", make_heatmap(np.zeros((20, 20), np.float32)))  # 1608 bytes
    small = make_heatmap(np.zeros((10, 10), np.float32))  # 408 bytes
    cache.put("small", small)
    cache.put("small", small)

    assert cache.get("big") is None
    assert (len(cache), cache.bytes) == (1, 408)
