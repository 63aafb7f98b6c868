"""Hostile and careless traffic against the service as users start it.

Every test here talks to a real ``python -m service`` process on a free loopback port (the
README's serve command, plus only the flags a test names: port, and an API key where a test
needs one), so what is measured is what users run. ``service_process`` is one such process
shared by every test of this directory that uses it (started at the first, stopped after the
last): what such a test asserts must hold whatever the tests before it sent, so it reads the
service's counters as differences over its own requests. ``own_service_process`` starts one
per test module, for tests whose assertions depend on what the process served before them
(RSS against a baseline, a high-water gauge); ``start_service`` starts one with extra flags or
environment for a single test.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Generator, Iterator
from dataclasses import dataclass
from pathlib import Path

import psutil
import pytest

from tests.load.harness import free_port, stop_server, tail

ROOT = Path(__file__).resolve().parents[2]
READY_TIMEOUT_S = 180.0


@dataclass
class ServiceProcess:
    """A running ``python -m service``: its base URL, process and log file."""

    url: str
    port: int
    process: subprocess.Popen
    log_file: Path

    def rss_mib(self) -> float:
        return psutil.Process(self.process.pid).memory_info().rss / 2**20

    def cpu_seconds(self) -> float:
        times = psutil.Process(self.process.pid).cpu_times()
        return times.user + times.system

    def log(self) -> str:
        return self.log_file.read_text(errors="replace")

    def errors(self, lines: int = 80) -> str:
        """The log from its first logged error on (at most ``lines`` lines), or "" without one
        (a failed test's report shows it: ``pytest_runtest_makereport``)."""
        log = self.log().splitlines()
        logged = (i for i, line in enumerate(log) if " ERROR " in line or line.startswith("ERROR:"))
        first = next(logged, len(log))
        return "\n".join(log[first : first + lines])


def launch(
    log_dir: Path, args: list[str] | None = None, env: dict[str, str] | None = None
) -> ServiceProcess:
    """``python -m service --port N [args]`` with the caller's environment minus every
    ``CELEBXAI_`` variable (the service's defaults), plus ``env``; returned once ready."""
    port = free_port()
    command = [sys.executable, "-m", "service", "--port", str(port), *(args or [])]
    environment = {k: v for k, v in os.environ.items() if not k.startswith("CELEBXAI_")}
    environment.update(env or {})
    log_file = log_dir / f"service-{port}.log"
    with log_file.open("wb") as log:
        process = subprocess.Popen(
            command, cwd=ROOT, env=environment, stdout=log, stderr=subprocess.STDOUT
        )
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + READY_TIMEOUT_S
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"service exited with {process.returncode}:\n{tail(log_file)}")
        try:
            with urllib.request.urlopen(f"{url}/readyz", timeout=2):
                return ServiceProcess(url, port, process, log_file)
        except (urllib.error.URLError, ConnectionError):
            time.sleep(0.5)
    stop_server(process)
    raise RuntimeError(f"service not ready within {READY_TIMEOUT_S:.0f} s:\n{tail(log_file)}")


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(
    item: pytest.Item,
) -> Generator[None, pytest.TestReport, pytest.TestReport]:
    """A failed test's report shows what each service it used logged from its first error
    on: a status a test did not expect (a 500) says there why."""
    report = yield
    if report.failed:
        for value in getattr(item, "funcargs", {}).values():
            if isinstance(value, ServiceProcess) and (errors := value.errors()):
                report.sections.append(
                    (f"service {value.url}: its log from its first error", errors)
                )
    return report


@pytest.fixture(scope="package")
def service_process(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServiceProcess]:
    """The README's ``python -m service`` on a free port, shared by every module of this
    directory that uses it, and stopped once the directory's tests are done. Its tests must not
    damage it (kill it, change its settings, keep its connections) and must pass whatever it
    served before them: counters are read before and after, never as absolute values."""
    service = launch(tmp_path_factory.mktemp("service"))
    try:
        yield service
    finally:
        stop_server(service.process)


@pytest.fixture(scope="module")
def own_service_process(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServiceProcess]:
    """The README's ``python -m service`` on a free port, for one test module alone: for
    assertions that earlier traffic on a shared process would distort (RSS growth over a
    baseline, a high-water gauge such as ``celebxai_decode_pixels_peak``)."""
    service = launch(tmp_path_factory.mktemp("own-service"))
    try:
        yield service
    finally:
        stop_server(service.process)


@pytest.fixture
def start_service(tmp_path: Path) -> Iterator[Callable[..., ServiceProcess]]:
    """``start_service(args=[...], env={...})``: a service for one test, stopped after it."""
    started: list[ServiceProcess] = []

    def start(args: list[str] | None = None, env: dict[str, str] | None = None) -> ServiceProcess:
        started.append(launch(tmp_path, args, env))
        return started[-1]

    yield start
    for service in started:
        stop_server(service.process)
