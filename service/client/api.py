"""A small Python client of the service's own API: explain a photo, retrying what the service
asks to be retried.

``Client(url, api_key=...)`` holds one ``httpx.Client``; ``explain(photo, method, ...)`` posts
the photo to ``POST /explain/{method}`` and answers the JSON (``format="json"``) or the PNG's
bytes (``png``, ``overlay``). A 503 (``not_ready``, ``overloaded``) or 429 is retried after its
``Retry-After`` seconds (or a growing pause without one), a connection that fails after a
growing pause, ``retries`` times at most; any other error is raised as ``ServiceError`` with the
service's code and message. It uses only the public API, and nothing of the service's code.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import httpx

API_KEY_HEADER = "X-API-Key"
RETRIED_STATUSES = (429, 503)
FIRST_PAUSE_S = 0.5
LONGEST_PAUSE_S = 30.0


class ServiceError(Exception):
    """An error answer: its status, the service's error code and message."""

    def __init__(self, status: int, code: str, message: str) -> None:
        super().__init__(f"{status} {code}: {message}")
        self.status, self.code, self.message = status, code, message

    @classmethod
    def of(cls, response: httpx.Response) -> ServiceError:
        try:
            error = response.json()["error"]
            return cls(response.status_code, str(error["code"]), str(error["message"]))
        except (ValueError, KeyError, TypeError):
            return cls(response.status_code, "http_error", response.text[:200])


@dataclass
class Client:
    """The service at ``url`` (``http://127.0.0.1:8000``), with ``api_key`` where it has one.

    ``retries``: how many times one request is sent again after a 503, a 429 or a failed
    connection. ``sleep`` waits between tries (seconds; a test can pass its own). ``http``:
    an ``httpx.Client`` to send with (default: one of its own, ``timeout_s`` per request).
    """

    url: str
    api_key: str | None = None
    retries: int = 5
    timeout_s: float = 300.0
    sleep: Callable[[float], None] = time.sleep
    http: httpx.Client | None = None

    def __post_init__(self) -> None:
        self._own = self.http is None
        if self.http is None:
            self.http = httpx.Client(base_url=self.url, timeout=self.timeout_s)
        self.headers = {API_KEY_HEADER: self.api_key} if self.api_key else {}
        self.retried = 0
        """requests sent again so far (for a summary)"""

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def close(self) -> None:
        if self._own and self.http is not None:
            self.http.close()

    def explain(
        self,
        photo: bytes,
        method: str,
        params: Mapping[str, Any] | None = None,
        fmt: str = "json",
        filename: str = "photo",
    ) -> Any:
        """``POST /explain/{method}`` of ``photo`` with the method's (and the common) query
        ``params``: the JSON answer for ``fmt="json"``, the PNG's bytes for ``png`` and
        ``overlay``."""
        query = {**(params or {}), "format": fmt}
        response = self._send(
            "POST",
            f"/explain/{method}",
            params={k: _query_value(v) for k, v in query.items()},
            files={"file": (filename, photo)},
        )
        return response.json() if fmt == "json" else response.content

    def _send(self, method: str, path: str, **request: Any) -> httpx.Response:
        assert self.http is not None
        pause = FIRST_PAUSE_S
        for attempt in range(self.retries + 1):
            last = attempt == self.retries
            try:
                response = self.http.request(
                    method, self.url.rstrip("/") + path, headers=self.headers, **request
                )
            except httpx.TransportError:
                if last:
                    raise
            else:
                if response.status_code < 400:
                    return response
                if response.status_code not in RETRIED_STATUSES or last:
                    raise ServiceError.of(response)
                pause = _retry_after(response, pause)
            self.retried += 1
            self.sleep(pause)
            pause = min(pause * 2, LONGEST_PAUSE_S)
        raise AssertionError("unreachable: the last try returns or raises")


def _retry_after(response: httpx.Response, fallback: float) -> float:
    """The answer's ``Retry-After`` in seconds (capped), else ``fallback``."""
    value = response.headers.get("Retry-After", "").strip()
    if value.isdigit():
        return min(float(value), LONGEST_PAUSE_S)
    return fallback


def _query_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value)
