"""What job tests read of a service through its client: a job's state, polled until it is one
of some states, and the explanation passes run so far (``/metrics``, read by ``metric``)."""

from __future__ import annotations

import time

from fastapi.testclient import TestClient


def wait_for(client: TestClient, job_id: str, states: set[str], timeout: float = 300) -> dict:
    """The job's status once its state is one of ``states``; fails after ``timeout`` s."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        status = client.get(f"/jobs/{job_id}").json()
        if status["state"] in states:
            return status
        time.sleep(0.05)
    raise AssertionError(f"job {job_id} not {states} within {timeout} s: {status}")


def metric(client: TestClient, name: str) -> float:
    """The value of the unlabelled sample ``name`` in the service's ``/metrics``."""
    for line in client.get("/metrics").text.splitlines():
        if line.startswith(f"{name} "):
            return float(line.split()[1])
    raise AssertionError(f"no {name} in /metrics")


def batches(client: TestClient) -> float:
    """The forward passes the service's explanations and jobs have run
    (``celebxai_explanation_batches_total``)."""
    return metric(client, "celebxai_explanation_batches_total")
