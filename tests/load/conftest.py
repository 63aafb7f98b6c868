"""The load test's summary goes at the very end of the pytest output, where CI logs end."""

from __future__ import annotations

import pytest

SUMMARIES = pytest.StashKey[list[str]]()


@pytest.fixture
def load_summaries(pytestconfig: pytest.Config) -> list[str]:
    """Append a summary here to have it printed after the test session."""
    return pytestconfig.stash.setdefault(SUMMARIES, [])


def pytest_terminal_summary(
    terminalreporter: pytest.TerminalReporter, config: pytest.Config
) -> None:
    summaries = config.stash.get(SUMMARIES, [])
    if summaries:
        terminalreporter.section("load test")
        for summary in summaries:
            terminalreporter.write_line(summary)
