"""CI's load test: the service, started as the README does, under 90 s of concurrent traffic
(``locustfile.py``): no 5xx, no connection error, no lost request, every answer right, and RSS
levelling off after warm-up (its slope over the last half, its peak against the warm RSS). The
figures are printed at the end of the run and kept in tests/artifacts/load/."""

from __future__ import annotations

from pathlib import Path

import pytest

from .harness import LoadConfig, run_load_test


@pytest.mark.load
def test_the_service_under_load_answers_everything_right_and_its_memory_levels_off(
    data_root: Path, default_bundle: Path, load_summaries: list[str]
):
    result = run_load_test(LoadConfig(model=default_bundle, data=data_root))
    load_summaries.append(result.summary())

    assert result.problems == []
