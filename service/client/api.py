"""A small Python client of the service's own API: explain a photo, retrying what the service
asks to be retried.

``Client(url, api_key=...)`` holds one ``httpx.Client``. ``predict(photo)`` is ``POST /predict``;
``methods()`` lists the explanation methods (``GET /explain``: names, parameters, whether the
served bundle can run each); ``explain(photo, method, ...)`` posts the photo to ``POST
/explain/{method}`` and answers the JSON (``format="json"``) or the PNG's bytes (``png``,
``overlay``); ``explain_job(photo, method, ...)`` runs the same request as a job (``POST
/jobs/{method}``), follows its progress on its event stream (``GET /jobs/{id}/events``, a tqdm
bar or a callback) and answers the job's JSON result. A 503 (``not_ready``, ``overloaded``) or
429 is retried after its ``Retry-After`` seconds (or a growing pause without one), a connection
that fails after a growing pause, ``retries`` times at most; any other error is raised as
``ServiceError`` with the service's code and message. It uses only the public API, and nothing
of the service's code.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from typing import Any

import httpx

API_KEY_HEADER = "X-API-Key"
RETRIED_STATUSES = (429, 503)
FIRST_PAUSE_S = 0.5
LONGEST_PAUSE_S = 30.0
JOB_ENDS = ("done", "failed", "cancelled", "gone")
"""A job's states after which its event stream closes."""
Progress = Callable[[dict[str, Any]], None]
"""Called with each event of a job (``state``, ``progress`` 0..1, ``elapsed_s``, ...)."""


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

    def predict(self, photo: bytes, filename: str = "photo", **params: Any) -> dict[str, Any]:
        """``POST /predict`` of ``photo`` (``detect``, ``face`` as ``params``): the JSON answer."""
        response = self._send(
            "POST",
            "/predict",
            params={k: _query_value(v) for k, v in params.items()},
            files={"file": (filename, photo)},
        )
        answer: dict[str, Any] = response.json()
        return answer

    def methods(self) -> list[dict[str, Any]]:
        """``GET /explain``'s methods: each one's ``name``, ``title``, parameters (JSON Schema),
        whether the served bundle can run it (``available``), ..."""
        methods: list[dict[str, Any]] = self._send("GET", "/explain").json()["methods"]
        return methods

    def explain_job(
        self,
        photo: bytes,
        method: str,
        params: Mapping[str, Any] | None = None,
        progress: Progress | bool = True,
        filename: str = "photo",
    ) -> dict[str, Any]:
        """``explain(photo, method, params)`` as a job: ``POST /jobs/{method}``, then its events
        until it ends, each shown on a tqdm bar (``progress=True``), handed to a callback, or
        ignored (``False``); then its JSON answer (the synchronous call's). A job that failed or
        was cancelled raises ``ServiceError`` with its error's code."""
        query = {k: _query_value(v) for k, v in (params or {}).items()}
        status = self._send(
            "POST", f"/jobs/{method}", params=query, files={"file": (filename, photo)}
        ).json()
        job = status["id"]
        with _progress_bar(method, progress) as report:
            for event in self._events(job):
                report(event)
                last = event
        if last["state"] != "done":
            error = last.get("error") or {}
            raise ServiceError(
                409, error.get("code", f"job_{last['state']}"), error.get("message", last["state"])
            )
        result: dict[str, Any] = self._send("GET", f"/jobs/{job}").json()["result"]
        return result

    def _events(self, job: str) -> Iterator[dict[str, Any]]:
        """The job's Server-Sent Events (``data:`` lines as JSON) until the one that ends it."""
        assert self.http is not None
        url = self.url.rstrip("/") + f"/jobs/{job}/events"
        with self.http.stream("GET", url, headers=self.headers) as stream:
            if stream.status_code >= 400:
                stream.read()
                raise ServiceError.of(stream)
            for line in stream.iter_lines():
                if not line.startswith("data:"):
                    continue  # comments (keep-alives) and blank separators
                event: dict[str, Any] = json.loads(line[len("data:") :])
                yield event
                if event.get("state") in JOB_ENDS:
                    return

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


class _progress_bar:
    """A context giving the callback that shows a job's events: a tqdm bar of its progress
    (``True``), the caller's own callback, or nothing (``False``)."""

    def __init__(self, method: str, progress: Progress | bool) -> None:
        self.method, self.progress = method, progress
        self.bar: Any = None

    def __enter__(self) -> Progress:
        if callable(self.progress):
            return self.progress
        if not self.progress:
            return lambda event: None
        from tqdm import tqdm  # the client extra's; only a bar needs it

        self.bar = tqdm(total=100, desc=self.method, unit="%", leave=False)

        def show(event: dict[str, Any]) -> None:
            self.bar.n = round(100 * float(event.get("progress", 0.0)))
            self.bar.set_postfix_str(str(event.get("state", "")), refresh=True)

        return show

    def __exit__(self, *exc_info: object) -> None:
        if self.bar is not None:
            self.bar.close()


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
