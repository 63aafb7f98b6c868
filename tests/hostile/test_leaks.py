"""What a client can see of the server: no paths, reprs or dumps in errors; every error JSON;
HEAD wherever GET works; /docs that needs no other host; security headers on the page.
Against ``python -m service`` as users start it (and one started on a broken bundle).
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
import time
import urllib.error
import urllib.request
from html.parser import HTMLParser

import pytest

from tests.load.harness import free_port, stop_server, tail

from .conftest import READY_TIMEOUT_S, ROOT
from .raw_http import connect, multipart, read_until_closed

# the directory's shared service process (tests/hostile/conftest.py), started as users start it
pytestmark = pytest.mark.slow

LEAK_PATTERNS = [
    re.compile(r" at 0x[0-9a-f]+"),  # object reprs
    re.compile(r"/(?:work|home|tmp|usr|opt|root)/"),  # absolute paths
    re.compile(r"errors\.pydantic\.dev|input_value|input_type"),  # pydantic dumps
]


def _request(url: str, method: str = "GET", **kwargs) -> tuple[int, dict[str, str], bytes]:
    request = urllib.request.Request(url, method=method, **kwargs)
    try:
        with urllib.request.urlopen(request, timeout=60) as response:
            return response.status, dict(response.headers.items()), response.read()
    except urllib.error.HTTPError as error:
        return error.code, dict(error.headers.items()), error.read()


def _assert_no_leak(text: str) -> None:
    for pattern in LEAK_PATTERNS:
        assert not pattern.search(text), f"{pattern.pattern!r} in {text!r}"


def test_readyz_says_why_a_broken_bundle_cannot_be_served_without_paths_or_dumps(
    tmp_path, default_bundle
):
    bundle = tmp_path / "secret-location" / "bundle"
    shutil.copytree(default_bundle, bundle)
    meta = json.loads((bundle / "meta.json").read_text())
    del meta["classes"]
    meta["input"]["size"] = "huge"
    (bundle / "meta.json").write_text(json.dumps(meta))
    port = free_port()
    log = tmp_path / "service.log"
    with log.open("wb") as out:
        process = subprocess.Popen(
            [sys.executable, "-m", "service", "--port", str(port), "--model", str(bundle)],
            cwd=ROOT,
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + READY_TIMEOUT_S
        status, body = None, b""
        while time.monotonic() < deadline and process.poll() is None:
            try:
                status, _, body = _request(f"{url}/readyz")
                if status == 503 and b"cannot be served" in body:
                    break
            except (urllib.error.URLError, ConnectionError):
                pass
            time.sleep(0.5)
        assert status == 503, tail(log)
        error = json.loads(body)["error"]
        predict_status, _, predict_body = _request(f"{url}/predict", "POST", data=b"")
    finally:
        stop_server(process)

    assert error["code"] == "not_ready"
    message = error["message"]
    assert message.startswith("the model bundle cannot be served: meta.json does not match")
    assert "classes: Field required" in message
    assert "secret-location" not in message
    _assert_no_leak(message)
    assert predict_status == 503 and json.loads(predict_body)["error"]["message"] == message
    assert str(bundle) in log.read_text()  # the operator's log keeps the details


def test_a_corrupt_image_is_described_without_object_reprs(service_process):
    body, headers = multipart(b"\x89PNG\r\n\x1a\n" + b"\x00garbage" * 20)

    status, _, answer = _request(
        f"{service_process.url}/predict", "POST", data=body, headers=headers
    )

    assert status == 400
    error = json.loads(answer)["error"]
    assert error["code"] == "corrupt_image"
    _assert_no_leak(error["message"])


def test_a_validation_message_says_each_problem_once(service_process, celebs_root):
    person = sorted(p for p in celebs_root.iterdir() if p.is_dir())[0]
    body, headers = multipart(sorted(person.glob("*.png"))[0].read_bytes())

    status, _, answer = _request(
        f"{service_process.url}/occlusion?window=-1&stride=x&face=-2&detect=maybe",
        "POST",
        data=body,
        headers=headers,
    )

    assert status == 422
    problems = json.loads(answer)["error"]["message"].split("; ")
    assert len(problems) == len(set(problems)) == 4, problems
    assert {p.split(":")[0] for p in problems} == {
        "query.window",
        "query.stride",
        "query.face",
        "query.detect",
    }


def _get_paths(url: str) -> list[str]:
    with urllib.request.urlopen(f"{url}/openapi.json", timeout=30) as response:
        document = json.load(response)
    return [
        path
        for path, operations in document["paths"].items()
        if "get" in operations and "{" not in path and not operations["get"].get("security")
    ]


def test_head_is_answered_wherever_get_is(service_process):
    url = service_process.url
    paths = sorted({*_get_paths(url), "/", "/docs", "/openapi.json", "/static/app.js"})
    assert {"/healthz", "/readyz", "/metrics"} <= set(paths)

    for path in paths:
        get_status, get_headers, _ = _request(url + path)
        head_status, head_headers, head_body = _request(url + path, "HEAD")

        assert head_status == get_status == 200, path
        assert head_body == b""
        assert head_headers["content-type"] == get_headers["content-type"], path


def test_a_malformed_request_line_is_a_json_400(service_process):
    sock = connect(service_process.url)
    sock.sendall(b"NOT AN HTTP REQUEST\x00\r\n\r\n")

    response = read_until_closed(sock, 15)

    assert response.status == 400
    assert response.json()["error"]["code"] == "bad_request"


def test_a_refused_cors_preflight_is_json(service_process):
    status, headers, body = _request(
        f"{service_process.url}/predict",
        "OPTIONS",
        headers={"Origin": "http://elsewhere.example", "Access-Control-Request-Method": "POST"},
    )

    assert status == 403
    assert headers["content-type"] == "application/json"
    assert json.loads(body)["error"]["code"] == "cors_refused"


class _References(HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.urls: list[str] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.urls += [value for name, value in attrs if name in ("src", "href") and value]


def test_docs_work_offline_from_the_service_s_own_files(service_process):
    url = service_process.url
    status, _, page = _request(f"{url}/docs")
    assert status == 200
    parser = _References()
    parser.feed(page.decode())
    assert len(parser.urls) >= 3
    assert b"<script>" not in page  # no inline script: the CSP allows none

    for reference in parser.urls:
        assert "//" not in reference, f"/docs references another host: {reference}"
        asset_status, headers, asset = _request(f"{url}/{reference.lstrip('/')}")
        assert asset_status == 200, reference
        assert asset and headers["x-content-type-options"] == "nosniff"
    _, _, starter = _request(f"{url}/static/docs.js")
    assert not re.search(rb"https?://", starter)


@pytest.mark.parametrize("path", ["/", "/static/app.js", "/docs", "/healthz"])
def test_the_page_and_its_files_carry_security_headers(service_process, path):
    _, headers, _ = _request(service_process.url + path)
    headers = {name.lower(): value for name, value in headers.items()}

    assert headers["x-content-type-options"] == "nosniff"
    assert headers["x-frame-options"] == "DENY"
    policy = headers["content-security-policy"]
    assert "script-src 'self'" in policy and "frame-ancestors 'none'" in policy
    assert "unsafe-inline" not in policy and "unsafe-eval" not in policy
