"""The README's first commands stay true to .ci/run, and the configuration table of
docs/operations.md to the settings class."""

from __future__ import annotations

import re
from pathlib import Path

from service.settings import ENV_PREFIX, Settings

ROOT = Path(__file__).resolve().parents[2]
README = (ROOT / "README.md").read_text(encoding="utf-8")
OPERATIONS = (ROOT / "docs" / "operations.md").read_text(encoding="utf-8")
SERVE = "python3 -m venv .venv && . .venv/bin/activate && pip install -e . && python -m service"
TEST = (
    "python3 -m venv .venv && . .venv/bin/activate && pip install -e '.[dev]' "
    "&& ruff check && ruff format --check && mypy && pytest"
)


def _code_blocks() -> list[str]:
    return [block.strip() for block in re.findall(r"```(?:bash)?\n(.*?)```", README, re.S)]


def test_readme_starts_with_the_serve_and_test_commands():
    assert README.startswith("# ")
    assert _code_blocks()[:2] == [SERVE, TEST]


def test_readme_names_the_fast_tier_next_to_the_test_command():
    assert 'pytest -m "not slow"' in README.split(TEST, 1)[1].split("```bash", 1)[0]


def test_ci_runs_the_readme_test_command():
    ci = (ROOT / ".ci" / "run").read_text()

    assert TEST in ci.splitlines()
    assert "set -euo pipefail" in ci


def test_configuration_table_lists_every_setting():
    documented = set(re.findall(rf"^\| `{ENV_PREFIX}([A-Z_]+)` \|", OPERATIONS, re.M))

    assert documented == {name.upper() for name in Settings.model_fields}
