from __future__ import annotations

from service.observability.metrics import ServiceMetrics


def test_each_instance_has_its_own_registry():
    first, second = ServiceMetrics(), ServiceMetrics()

    first.observe_batch(4, 0.01, 0.002)

    assert b"celebxai_batch_size_count 1.0" in first.render()
    assert b"celebxai_batch_size_count 0.0" in second.render()
