"""Fixtures shared by every test folder.

Face photos come from ``../shared/data`` beside the project (see its README). A user's clone
has none: tests that need it skip with the reason. CI always has it, and there (``CI`` set) a
missing data folder fails the run instead of skipping silently.
"""

from __future__ import annotations

import os
from pathlib import Path

# As ``python -m service`` does: torch's OpenMP threads must not busy-wait while the test
# process shares two cores with the uvicorn servers the load and browser tests start.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

from collections.abc import Callable, Iterator

import pytest

from service.common.cancellation import Cancellation
from tests.pacing import HeldPasses

ROOT = Path(__file__).resolve().parents[1]
# Markers that name an expensive kind of test (pyproject.toml): each implies ``slow``.
SLOW_KINDS = ("ray", "browser", "load", "training")
DATA_ROOT = Path(os.environ.get("CELEBXAI_DATA", ROOT.parent / "shared" / "data"))
DEFAULT_BUNDLE = ROOT / "models" / "celebs8"


@pytest.hookimpl(tryfirst=True)  # before -m selects: "not slow" must see the added marker
def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """A test marked ray, browser, load or training is also slow."""
    for item in items:
        if any(item.get_closest_marker(kind) for kind in SLOW_KINDS):
            item.add_marker(pytest.mark.slow)


@pytest.fixture
def hold_passes(monkeypatch: pytest.MonkeyPatch) -> Iterator[Callable[[int], HeldPasses]]:
    """``hold_passes(n)``: from then on, every piece of work (explanation, synthesis, job) waits
    before its n-th forward pass until it is cancelled (tests/pacing.py); held work goes on when
    the test ends."""
    made: list[HeldPasses] = []

    def hold(before_pass: int) -> HeldPasses:
        held = HeldPasses(before_pass)
        monkeypatch.setattr(Cancellation, "batch", held.wrap(Cancellation.batch))
        made.append(held)
        return held

    yield hold
    for held in made:
        held.ended.set()


@pytest.fixture(scope="session")
def data_root() -> Path:
    """``../shared/data`` (or ``$CELEBXAI_DATA``): celebs8/, others/, wild_others/."""
    if not (DATA_ROOT / "celebs8").is_dir():
        message = f"face data not found at {DATA_ROOT} (see README: Data)"
        if os.environ.get("CI"):
            pytest.fail(message + " -- CI must have it", pytrace=False)
        pytest.skip(message)
    return DATA_ROOT


@pytest.fixture(scope="session")
def celebs_root(data_root: Path) -> Path:
    return data_root / "celebs8"


@pytest.fixture(scope="session")
def default_bundle() -> Path:
    """The committed default model bundle."""
    if not (DEFAULT_BUNDLE / "meta.json").is_file():
        pytest.fail(f"default bundle missing at {DEFAULT_BUNDLE}", pytrace=False)
    return DEFAULT_BUNDLE
