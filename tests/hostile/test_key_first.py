"""The API key is checked before the body is read, against ``python -m service --api-key``.

A client without the key announces a 10 MB upload and sends none of it: the 401 must come
anyway (so it came before the body), with ``Connection: close``. Every operation that the
OpenAPI document marks as needing the key is tried; the open ones stay open.
"""

from __future__ import annotations

import json
import subprocess
import sys
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.load.harness import stop_server

from .conftest import ROOT, ServiceProcess, launch
from .raw_http import connect, multipart, read_until_closed, request_head

# a service process of its own with an API key, and the directory's shared one without
pytestmark = pytest.mark.slow

KEY = "hostile-test-key"
ANNOUNCED_BYTES = 10 * 2**20
ANSWER_WITHIN_S = 15.0


@pytest.fixture(scope="module")
def keyed_service(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServiceProcess]:
    service = launch(tmp_path_factory.mktemp("keyed"), ["--api-key", KEY])
    try:
        yield service
    finally:
        stop_server(service.process)


@pytest.fixture(scope="module")
def protected(keyed_service: ServiceProcess) -> list[tuple[str, str]]:
    """(method, path) of every operation whose OpenAPI entry requires the API key."""
    with urllib.request.urlopen(f"{keyed_service.url}/openapi.json", timeout=30) as response:
        document = json.load(response)
    found = [
        (method.upper(), path)
        for path, operations in document["paths"].items()
        for method, operation in operations.items()
        if any("APIKeyHeader" in requirement for requirement in operation.get("security", []))
    ]
    assert {("POST", "/predict"), ("GET", "/model")} <= set(found)
    return found


def _announce_upload(url: str, method: str, path: str, headers: dict[str, str]):
    head = request_head(
        method,
        path.replace("{", "").replace("}", ""),
        {
            "Content-Type": "multipart/form-data; boundary=never-sent",
            "Content-Length": str(ANNOUNCED_BYTES),
            **headers,
        },
    )
    sock = connect(url)
    sock.sendall(head)  # and not one byte of the body
    return read_until_closed(sock, ANSWER_WITHIN_S)


@pytest.mark.parametrize(
    ("headers", "code"),
    [({}, "missing_api_key"), ({"X-API-Key": "wrong"}, "invalid_api_key")],
    ids=["no-key", "wrong-key"],
)
def test_a_request_without_the_key_is_refused_before_its_body(
    keyed_service, protected, headers, code
):
    for method, path in protected:
        response = _announce_upload(keyed_service.url, method, path, headers)

        assert response.status == 401, (method, path, response.body)
        error = response.json()["error"]  # the Open Inference Protocol's: "<code>: <message>"
        assert (error["code"] if isinstance(error, dict) else error.split(":")[0]) == code
        assert response.headers["connection"] == "close"


def test_with_the_key_the_upload_is_read_and_answered(keyed_service, celebs_root: Path):
    person = sorted(p for p in celebs_root.iterdir() if p.is_dir())[0]
    body, headers = multipart(sorted(person.glob("*.png"))[0].read_bytes())
    sock = connect(keyed_service.url)
    sock.sendall(
        request_head("POST", "/predict?detect=false", {**headers, "X-API-Key": KEY}, close=True)
        + body
    )

    response = read_until_closed(sock, 120)

    assert response.status == 200, response.body
    assert response.json()["label"]


@pytest.mark.parametrize("path", ["/healthz", "/readyz", "/metrics", "/", "/docs"])
def test_health_metrics_page_and_docs_stay_open(keyed_service, path):
    with urllib.request.urlopen(keyed_service.url + path, timeout=30) as response:
        assert response.status == 200


def test_the_start_up_log_says_whether_authentication_is_on(keyed_service, service_process):
    assert "API key authentication is on" in keyed_service.log()
    assert "API key authentication is OFF" in service_process.log()


def test_a_key_in_the_query_string_is_not_logged(keyed_service):
    secret = "query-secret-4f9d2"
    url = f"{keyed_service.url}/healthz?api_key={secret}&access_token={secret}&x=1"
    with urllib.request.urlopen(url, timeout=30) as response:
        assert response.status == 200

    log = keyed_service.log()
    assert "/healthz?api_key=***&access_token=***&x=1" in log
    assert secret not in log


@pytest.mark.parametrize("value", ["", " "])
def test_an_empty_key_stops_the_service_at_start_up(value):
    result = subprocess.run(
        [sys.executable, "-m", "service", "--port", "0"],
        cwd=ROOT,
        env={"PATH": "/usr/bin:/bin", "CELEBXAI_API_KEY": value},
        capture_output=True,
        text=True,
        timeout=120,
    )

    assert result.returncode == 2
    assert "the API key is empty" in result.stderr
