"""The two hosts of the service, started as users start them, once per test session.

``single_service`` is ``python -m service``; ``ray_service`` is ``python -m service --ray`` with
a local Ray instance of 2 CPUs (``--ray-num-cpus 2``), which the service starts and stops
itself. Both get the same flags (an API key, a smaller upload limit, explanation queues of the
same size, a short job event interval), so their answers can be compared. The fault test joins
the service's Ray instance as a second driver to find and kill a replica through Ray's API.
Teardown checks that the Ray instance left no process behind.
"""

from __future__ import annotations

import contextlib
import os
import re
import subprocess
import time
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import psutil
import pytest

from tests.conftest import DEFAULT_BUNDLE, ROOT
from tests.load.harness import free_port, server_command, stop_server, tail

API_KEY = "scaleout-test-key"
MAX_UPLOAD_BYTES = 1_000_000
# Explanation capacity: 2 at once, 2 waiting, in both hosts (single: max_explanations and
# explanation_queue; Ray: the Explain deployment's max ongoing and max queued requests).
COMMON_FLAGS = [
    "--api-key",
    API_KEY,
    "--max-upload-bytes",
    str(MAX_UPLOAD_BYTES),
    "--explanation-queue",
    "2",
    "--access-log",
    "false",
    # job events up to 12x as often as by default (0.25 s): test_jobs_ray's 12-batch LIME job
    # shows its progress in ~24 events here (5 at the default), so at least 2 on a CPU more than
    # ten times as fast
    "--job-event-interval-s",
    "0.02",
]
RAY_FLAGS = [
    "--ray",
    "--ray-num-cpus",
    "2",
    "--ray-explain-max-ongoing-requests",
    "2",
    "--ray-explain-max-queued-requests",
    "2",
    "--ray-request-timeout-s",
    "90",
]
_RAY_ADDRESS = re.compile(r"started a local Ray instance at (\S+)")
STRAY_TIMEOUT_S = 60.0
READY_TIMEOUT_S = 300.0


@dataclass
class Service:
    url: str
    process: subprocess.Popen
    log_file: Path

    def log(self) -> str:
        return self.log_file.read_text(errors="replace")


def start_service(
    log_dir: Path, flags: list[str], environ: dict[str, str] | None = None
) -> Service:
    """``python -m service [flags] --port N`` with the common flags and the caller's
    environment minus ``CELEBXAI_*``, plus ``environ``; returned once ``/readyz`` answers 200
    (Ray's proxy accepts connections, and holds them, before the application is up: each poll
    has a timeout)."""
    port = free_port()
    log_file = log_dir / f"service-{port}.log"
    url = f"http://127.0.0.1:{port}"
    command = [*server_command(port, DEFAULT_BUNDLE, flags), *COMMON_FLAGS]
    env = {k: v for k, v in os.environ.items() if not k.startswith("CELEBXAI_")}
    env.update(environ or {})
    started = time.perf_counter()
    with log_file.open("wb") as log:
        process = subprocess.Popen(command, cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT)
    while time.perf_counter() - started < READY_TIMEOUT_S:
        if process.poll() is not None:
            raise RuntimeError(f"service exited with {process.returncode}:\n{tail(log_file)}")
        try:
            with urllib.request.urlopen(f"{url}/readyz", timeout=5) as response:
                if response.status == 200:
                    name = " ".join(flags) or "single process"
                    print(f"\n{name}: ready in {time.perf_counter() - started:.1f} s")
                    return Service(url, process, log_file)
        except OSError:  # refused, not ready yet (503), or held past the timeout
            time.sleep(1.0)
    stop_server(process)
    raise RuntimeError(f"service not ready within {READY_TIMEOUT_S:.0f} s:\n{tail(log_file)}")


@pytest.fixture(scope="session")
def single_service(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Service]:
    service = start_service(tmp_path_factory.mktemp("single"), [])
    try:
        yield service
    finally:
        stop_server(service.process)


@dataclass
class RayService(Service):
    ray_address: str


@pytest.fixture(scope="session")
def ray_service(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RayService]:
    with started_ray_service(tmp_path_factory.mktemp("ray")) as service:
        yield service


@contextlib.contextmanager
def started_ray_service(
    log_dir: Path, environ: dict[str, str] | None = None
) -> Iterator[RayService]:
    """``python -m service --ray`` (``start_service``), stopped at the end with no Ray process
    left behind."""
    service = start_service(log_dir, RAY_FLAGS, environ)
    found = _RAY_ADDRESS.search(service.log())
    address = found.group(1) if found else ""
    ray_processes = _processes_of(address)
    try:
        assert address, "the service did not log its Ray instance's address"
        assert ray_processes, f"no Ray process found for {address}"
        yield RayService(service.url, service.process, service.log_file, address)
    finally:
        stop_ray_service(service, ray_processes)


def _processes_of(address: str) -> list[psutil.Process]:
    """The processes of the Ray instance at ``address``: those of its session (GCS server,
    raylet, agents), named in the command line of those that know its address, and their
    children (the workers, replicas among them)."""
    if not address:
        return []
    commands = {}
    for process in psutil.process_iter(["cmdline"]):
        with contextlib.suppress(psutil.Error):
            commands[process] = " ".join(process.info["cmdline"] or [])
    sessions = {
        found.group(1)
        for command in commands.values()
        if f"--gcs-address={address}" in command
        and (found := re.search(r"--session-name=(\S+)", command))
    }
    found = [
        process
        for process, command in commands.items()
        if any(f"--session-name={session}" in command for session in sessions)
    ]
    for process in list(found):  # the workers (replicas) rename themselves: ray::...
        with contextlib.suppress(psutil.Error):
            found.extend(child for child in process.children(recursive=True) if child not in found)
    return found


def stop_ray_service(service: Service, ray_processes: list[psutil.Process]) -> None:
    """Stop the service (SIGTERM: it deletes its app and stops its Ray instance), then check
    that none of that instance's processes is left; kill any that is, and fail."""
    stop_server(service.process)
    _, alive = psutil.wait_procs(ray_processes, timeout=STRAY_TIMEOUT_S)
    for process in alive:
        process.kill()
    assert not alive, f"Ray processes left after the service stopped: {[p.pid for p in alive]}"
