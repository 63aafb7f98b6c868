"""The keys of cached heatmaps (the LRU itself: tests/unit/common/test_lru.py)."""

from __future__ import annotations

from typing import Any

import numpy as np

from service.explain import array_digest, cache_key


def _key(**changes: Any) -> str:
    values: dict[str, Any] = {
        "image_digest": "img",
        "method": "occlusion",
        "params": {"window": 24, "stride": 12},
        "target": None,
        "model_digest": "model",
    }
    values.update(changes)
    return cache_key(**values)


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
