"""A real service (uvicorn on a free loopback port) and a real headless Chromium for the
browser tests.

Chromium is Debian's ``chromium`` package (``apt-get install -y chromium``), driven through
Playwright's Python package; Playwright's own browser downloads are never used. Where it is
missing the tests skip with the reason; in CI (``CI`` set) they fail instead.

The service is ``python -m service``'s main run by ``paced_service.py``, which paces a job's
partial maps so that what the page shows of a running job holds on a CPU of any speed. It serves
two models: the default bundle and its twin (the same weights under another name, as the API
tests make it), so that the page offers its model choice and its compare view.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import pytest
from load.harness import free_port, stop_server  # tests/load: the same service process helpers

from tests.bundle_copies import bundle_copy

TWIN_MODEL = "celebs8-twin"  # the default bundle's files under another name

ROOT = Path(__file__).resolve().parents[2]
ARTIFACTS = ROOT / "tests" / "artifacts" / "browser"
CHROMIUM = os.environ.get("CELEBXAI_CHROMIUM", "/usr/bin/chromium")
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
API_KEY = "browser-test-key"
READY_TIMEOUT_S = 180


def _unavailable(reason: str) -> None:
    if os.environ.get("CI"):
        pytest.fail(f"{reason} -- CI must have it", pytrace=False)
    pytest.skip(reason)


@pytest.fixture(scope="session")
def chromium_path() -> str:
    """Debian's Chromium binary (``$CELEBXAI_CHROMIUM`` to use another)."""
    path = shutil.which(CHROMIUM)
    if path is None:
        _unavailable(f"Chromium not found at {CHROMIUM}: apt-get install -y chromium")
    return path


@dataclass
class LiveService:
    url: str
    api_key: str
    process: subprocess.Popen
    log: Path

    def log_text(self) -> str:
        return self.log.read_text(errors="replace")[-4000:]


@pytest.fixture(scope="package")
def models_dir(tmp_path_factory: pytest.TempPathFactory, default_bundle: Path) -> Path:
    """The service's other models: ``TWIN_MODEL``, the default's files under another name (as
    the API tests make it)."""
    folder = tmp_path_factory.mktemp("models")
    bundle_copy(default_bundle, folder / "twin", TWIN_MODEL)
    return folder


@pytest.fixture(scope="package")
def live_service(
    default_bundle: Path, models_dir: Path, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[LiveService]:
    """``python -m service`` on the default bundle and ``models_dir``'s with an API key, once it
    is ready; run as ``paced_service`` (its main, with a job's partial maps paced: a job shows a
    map per batch, at least an event interval apart, on a CPU of any speed), with events every
    0.1 s."""
    port = free_port()
    log = tmp_path_factory.mktemp("service") / "service.log"
    command = [
        sys.executable, "-m", "tests.browser.paced_service", "--model", str(default_bundle),
        "--models-dir", str(models_dir), "--host", "127.0.0.1", "--port", str(port),
        "--threads", "2", "--api-key", API_KEY, "--log-level", "warning",
        "--job-event-interval-s", "0.1",
    ]  # fmt: skip
    env = {name: value for name, value in os.environ.items() if not name.startswith("CELEBXAI_")}
    with log.open("wb") as sink:
        process = subprocess.Popen(
            command, cwd=ROOT, env=env, stdout=sink, stderr=subprocess.STDOUT
        )
    service = LiveService(f"http://127.0.0.1:{port}", API_KEY, process, log)
    try:
        _wait_ready(service)
        yield service
    finally:
        stop_server(process)


def _wait_ready(service: LiveService) -> None:
    deadline = time.monotonic() + READY_TIMEOUT_S
    while time.monotonic() < deadline:
        if service.process.poll() is not None:
            pytest.fail(
                f"the service exited with {service.process.returncode}:\n{service.log_text()}"
            )
        try:
            if httpx.get(f"{service.url}/readyz", timeout=2).status_code == 200:
                return
        except httpx.TransportError:
            pass
        time.sleep(0.5)
    pytest.fail(f"the service was not ready within {READY_TIMEOUT_S} s:\n{service.log_text()}")


@pytest.fixture(scope="package")
def browser(chromium_path: str) -> Iterator[object]:
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        _unavailable("the playwright Python package is not installed (pip install -e '.[dev]')")
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(
            executable_path=chromium_path, headless=True, args=CHROMIUM_ARGS
        )
        try:
            yield browser
        finally:
            browser.close()


@dataclass
class PageSession:
    """An open page and the problems it reported: console errors and uncaught exceptions."""

    page: object
    console_errors: list[str] = field(default_factory=list)


@pytest.fixture
def open_page(browser, live_service: LiveService) -> Iterator[Callable[..., PageSession]]:
    """``open_page(**context_options)``: the web page in a fresh browser context."""
    contexts = []

    def open_(**options: object) -> PageSession:
        context = browser.new_context(**options)
        context.set_default_timeout(120_000)  # explanations on a shared 2-core CPU
        contexts.append(context)
        session = PageSession(context.new_page())
        session.page.on(
            "console", lambda m: m.type == "error" and session.console_errors.append(m.text)
        )
        session.page.on("pageerror", lambda e: session.console_errors.append(f"uncaught: {e}"))
        session.page.goto(live_service.url + "/")
        return session

    yield open_
    for context in contexts:
        context.close()


@dataclass(frozen=True)
class KnownFace:
    path: Path
    class_id: str
    prediction: dict  # the service's /predict answer for it


@pytest.fixture(scope="package")
def recognised_face(
    live_service: LiveService, default_bundle: Path, celebs_root: Path
) -> KnownFace:
    """A held-out photo (from the bundle's split.json test split) that the model classifies
    right, so that the page's label can be checked against the truth."""
    split = json.loads((default_bundle / "split.json").read_text())
    headers = {"X-API-Key": live_service.api_key}
    for relative, _ in split["splits"]["test"][:20]:
        path = celebs_root / relative
        with path.open("rb") as photo:
            response = httpx.post(
                f"{live_service.url}/predict", files={"file": photo}, headers=headers, timeout=60
            )
        response.raise_for_status()
        class_id = relative.split("/")[0]
        if response.json()["label"] == class_id:
            return KnownFace(path, class_id, response.json())
    pytest.fail("the model got none of 20 held-out photos right")


@pytest.fixture(scope="package")
def listed(live_service: LiveService) -> list[dict]:
    """The methods the service lists (GET /explain)."""
    return httpx.get(f"{live_service.url}/explain", timeout=10).json()["methods"]


@pytest.fixture(scope="package")
def methods(listed: list[dict]) -> list[str]:
    """Their names: the page must show one panel each, in this order."""
    return [method["name"] for method in listed]


@pytest.fixture(scope="session")
def artifacts() -> Path:
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    return ARTIFACTS
