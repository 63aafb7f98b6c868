"""CI's load test: the service, as a real uvicorn process, under about a minute of concurrent
traffic (``locustfile.py``): no 5xx, no connection error, no lost request, every answer right,
memory flat. The figures are printed at the end of the run and kept in tests/artifacts/load/."""
from __future__ import annotations

from pathlib import Path

import pytest

from .harness import LoadConfig, run_load_test


@pytest.mark.load
def test_the_service_under_load_answers_everything_right_with_flat_memory(
    data_root: Path, default_bundle: Path, load_summaries: list[str]
):
    result = run_load_test(LoadConfig(model=default_bundle, data=data_root))
    load_summaries.append(result.summary())

    assert result.problems == []
