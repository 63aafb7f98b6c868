"""A client that hangs up while its multipart upload is being read is counted as 499
``client_closed_request`` (FastAPI answers such a body 400 ``bad_request``, as if the client had
sent a broken one); a body that is complete but malformed stays 400."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import pytest

from service.app import create_app
from service.settings import Settings

BOUNDARY = b"celebxai-test"
PART_HEAD = (
    b"--" + BOUNDARY + b'\r\nContent-Disposition: form-data; name="file"; filename="a.png"\r\n'
    b"Content-Type: image/png\r\n\r\n"
)


def _post(app: Any, messages: list[dict[str, Any]], length: int) -> int:
    """POST /predict to ``app`` (no lifespan: the body is read before any dependency runs)
    with the body ``messages``; its answer's status."""
    scope = {
        "type": "http",
        "asgi": {"version": "3.0"},
        "http_version": "1.1",
        "method": "POST",
        "scheme": "http",
        "path": "/predict",
        "raw_path": b"/predict",
        "root_path": "",
        "query_string": b"",
        "client": ("127.0.0.1", 50000),
        "server": ("127.0.0.1", 8000),
        "headers": [
            (b"content-type", b"multipart/form-data; boundary=" + BOUNDARY),
            (b"content-length", str(length).encode()),
            (b"host", b"test"),
        ],
    }
    sent: list[dict[str, Any]] = []

    async def receive() -> dict[str, Any]:
        return messages.pop(0) if messages else {"type": "http.disconnect"}

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)

    asyncio.run(app(scope, receive, send))
    return next(m["status"] for m in sent if m["type"] == "http.response.start")


def _requests(app: Any, status: int) -> float:
    text = app.state.service.metrics.render().decode()
    line = f'celebxai_http_requests_total{{endpoint="/predict",method="POST",status="{status}"}}'
    values = [float(row.split()[-1]) for row in text.splitlines() if row.startswith(line + " ")]
    return values[0] if values else 0.0


@pytest.fixture(scope="module")
def app(default_bundle: Path) -> Any:
    return create_app(Settings(_env_file=None, model=default_bundle, access_log=False))


def test_a_hang_up_during_the_upload_counts_as_499(app: Any) -> None:
    first_part = PART_HEAD + b"\x89PNG\r\n" + b"\0" * 1000
    messages = [
        {"type": "http.request", "body": first_part, "more_body": True},
        {"type": "http.disconnect"},  # the client is gone before the rest
    ]
    before = _requests(app, 499), _requests(app, 400)
    assert _post(app, messages, length=100_000) == 499
    assert (_requests(app, 499), _requests(app, 400)) == (before[0] + 1, before[1])


def test_a_complete_but_broken_body_is_still_400(app: Any) -> None:
    body = b"garbage where the first boundary should be"
    before = _requests(app, 400), _requests(app, 499)
    status = _post(app, [{"type": "http.request", "body": body, "more_body": False}], len(body))
    assert status == 400
    assert (_requests(app, 400), _requests(app, 499)) == (before[0] + 1, before[1])
