"""The gateway's ASGI app: routes each request to the deployment that does its work.

Requests whose route runs on ``Predict`` or ``Explain`` (the placement each route of the app
declares, read by ``routing``) are read here (key checked first, body bounded as in the
single-process service) and carried to one replica of that deployment, whose in-process app
answers them; every other request is answered by the gateway's own in-process app. Refusals
are made by the same middleware as in the single-process service: a request without its key,
or with a body over the limit, is handed to the gateway's own app, which refuses it (401, 413)
before its body is read, with the same answer.

What only exists here: Ray's refusals become the service's JSON errors (a full queue: 503
``overloaded``; a replica that died or is unavailable: 503 ``not_ready``; both with
``Retry-After``; a call past ``ray_request_timeout_s``: 503 ``overloaded``), a client that hangs
up cancels the replica's work, ``/readyz`` (and the Open Inference Protocol's
``/v2/health/ready``) asks every deployment, and ``/metrics`` merges the
registries of all replicas (``metrics_merge``).
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import logging
import time
from collections.abc import Awaitable, Callable
from typing import Any, Protocol

from fastapi import FastAPI
from starlette.datastructures import Headers
from starlette.types import Message, Receive, Scope, Send

from service.app import MULTIPART_OVERHEAD_BYTES
from service.errors import NotReady, Overloaded, ServiceError
from service.http.api_key import API_KEY_HEADER, protected_operations, verify_api_key
from service.http.body_limit import length_of
from service.http.errors import error_response
from service.observability.metrics import ServiceMetrics
from service.observability.trace_middleware import propagated
from service.scaleout.forward import ForwardedRequest, ForwardedResponse, run_asgi
from service.scaleout.metrics_merge import merge_expositions
from service.scaleout.routing import DEPLOYMENTS, Routing
from service.settings import Settings

log = logging.getLogger(__name__)

READY_TIMEOUT_S = 10.0
# Readiness, the service's own and the Open Inference Protocol's: every deployment is asked.
READY_PATHS = ("/readyz", "/v2/health/ready")
# Set by the replica on every answer it made (deployments.AppReplica): which replica, where.
SERVED_BY_HEADER = "x-served-by"
RETRY_AFTER_OVERLOADED = "2"
RETRY_AFTER_UNAVAILABLE = "5"


class Call(Protocol):
    """A call to a deployment in flight (Ray's ``DeploymentResponse``)."""

    def __await__(self) -> Any: ...

    def cancel(self) -> None: ...


# (deployment name, request) -> the call to one of its replicas
Dispatch = Callable[[str, ForwardedRequest], Call]
# the texts of every replica's registry but the gateway's own
Expositions = Callable[[], Awaitable[list[str]]]


class Gateway:
    def __init__(
        self,
        local: FastAPI,
        settings: Settings,
        dispatch: Dispatch,
        expositions: Expositions,
        metrics: ServiceMetrics,
        queue_full: tuple[type[BaseException], ...],
        cancelled: tuple[type[BaseException], ...],
    ) -> None:
        """``queue_full``: the dispatcher's exceptions for a full queue (Ray's
        ``BackPressureError``), 503 ``overloaded``. ``cancelled``: those of a call cancelled
        (Ray cancels the gateway's calls when their client hangs up, sometimes before the
        gateway hears of it): no answer, the client is gone. Any other failure of a call (a
        replica that died, none available) is 503 ``not_ready``."""
        self.local = local
        self.routing = Routing(local.routes)
        self.settings = settings
        self.dispatch = dispatch
        self.expositions = expositions
        self.metrics = metrics
        self.queue_full = queue_full
        self.cancelled: tuple[type[BaseException], ...] = (asyncio.CancelledError, *cancelled)
        self.max_body_bytes = settings.max_upload_bytes + MULTIPART_OVERHEAD_BYTES
        self._protected: list[tuple[str, Any]] | None = None

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":  # lifespan: the gateway's own app's
            await self.local(scope, receive, send)
            return
        method, path = scope["method"], scope["path"]
        if method in ("GET", "HEAD") and path in READY_PATHS:
            await self._readyz(scope, receive, send)
            return
        if method in ("GET", "HEAD") and path == "/metrics":
            await self._metrics(scope, receive, send)
            return
        deployment = self.routing.deployment_for(method, path)
        if deployment is None or self._refused_by_local(scope):
            await self.local(scope, receive, send)
            return
        body, complete = await self._read_body(receive)
        if body is None:
            return  # the client left while sending
        if not complete:  # over the limit: the local app refuses it (413) as it would
            await self.local(scope, _replay(body, receive), send)
            return
        request = ForwardedRequest.from_scope(scope, body)
        request = dataclasses.replace(request, headers=propagated(request.headers))
        started = time.perf_counter()
        response = await self._forward(deployment, request, receive)
        if response is None:
            return  # the client left: the replica's app counts it (499) if it had started
        if response.header(SERVED_BY_HEADER) is None:  # the gateway's own answer: count it
            labels = (self.routing.route_template(path, method), method, str(response.status))
            self.metrics.requests.labels(*labels).inc()
            self.metrics.latency.labels(*labels).observe(time.perf_counter() - started)
        for message in response.messages():
            await send(message)

    def _refused_by_local(self, scope: Scope) -> bool:
        """Whether the gateway's own app would refuse this request from its head alone
        (a missing or wrong key, a declared length over the limit)."""
        headers = Headers(scope=scope)
        declared = length_of(headers.get("content-length", ""))
        if declared is not None and declared > self.max_body_bytes:
            return True
        if self.settings.api_key is None:
            return False
        if self._protected is None:
            self._protected = protected_operations(self.local.openapi())
        method, path = scope["method"], scope["path"]
        if not any(method == m and regex.match(path) for m, regex in self._protected):
            return False
        try:
            verify_api_key(self.settings.api_key, headers.get(API_KEY_HEADER))
        except ServiceError:
            return True
        return False

    async def _read_body(self, receive: Receive) -> tuple[bytes | None, bool]:
        """The whole body (None: the client left), and False when it passed the limit (what
        was read so far is returned, to replay)."""
        chunks: list[bytes] = []
        size = 0
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                return None, False
            chunk = message.get("body", b"")
            chunks.append(chunk)
            size += len(chunk)
            if size > self.max_body_bytes:
                return b"".join(chunks), False
            if not message.get("more_body", False):
                return b"".join(chunks), True

    async def _forward(
        self, deployment: str, request: ForwardedRequest, receive: Receive
    ) -> ForwardedResponse | None:
        """The replica's answer, or the service's error for Ray's refusal; None when the
        client left (its work is cancelled) or the call was cancelled."""
        call = self.dispatch(deployment, request)
        answer = asyncio.ensure_future(_await(call))
        answer.add_done_callback(_retrieve)  # a call given up on may still fail: seen here
        left = asyncio.ensure_future(_disconnected(receive))
        try:
            done, _ = await asyncio.wait(
                {answer, left},
                timeout=self.settings.ray_request_timeout_s,
                return_when=asyncio.FIRST_COMPLETED,
            )
        except asyncio.CancelledError:  # Ray's proxy cancels the gateway when the client left
            call.cancel()
            answer.cancel()
            raise
        finally:
            left.cancel()
        if left in done or answer not in done:
            call.cancel()
            answer.cancel()
            if left in done:  # whatever the call became (Ray cancels it too): nobody reads it
                return None
            return _error(
                request.path,
                Overloaded(
                    f"the {deployment} deployment did not answer within "
                    f"{self.settings.ray_request_timeout_s:g} s; retry later",
                    headers={"Retry-After": RETRY_AFTER_OVERLOADED},
                ),
            )
        try:
            return answer.result()
        except self.cancelled:
            return None
        except BaseException as exc:  # noqa: BLE001 - every failure becomes a JSON 503
            return _error(request.path, self._refusal(deployment, exc))

    def _refusal(self, deployment: str, exc: BaseException) -> ServiceError:
        if isinstance(exc, self.queue_full):
            return Overloaded(
                f"the {deployment} deployment's queue is full; retry shortly",
                headers={"Retry-After": RETRY_AFTER_OVERLOADED},
            )
        log.warning("%s call failed: %r", deployment, exc)
        return NotReady(
            f"no {deployment} replica could serve the request ({type(exc).__name__}); "
            "retry shortly",
            headers={"Retry-After": RETRY_AFTER_UNAVAILABLE},
        )

    async def _readyz(self, scope: Scope, receive: Receive, send: Send) -> None:
        """Ready when the gateway's own app (its answer to the path asked) and one replica of
        every deployment (their ``/readyz``) say so; else 503 ``not_ready`` naming the first
        that is not, and why, in the path's error shape."""
        headers = list(scope.get("headers", []))
        own = await run_asgi(
            self.local,
            ForwardedRequest(method=scope["method"], path=scope["path"], headers=headers),
        )
        probe = ForwardedRequest(method=scope["method"], path="/readyz", headers=headers)
        if own.status == 200:
            for deployment in DEPLOYMENTS:
                reason = await self._not_ready(deployment, probe)
                if reason is not None:
                    refusal = NotReady(reason, headers={"Retry-After": RETRY_AFTER_UNAVAILABLE})
                    own = _error(scope["path"], refusal)
                    break
        for message in own.messages():
            await send(message)

    async def _not_ready(self, deployment: str, probe: ForwardedRequest) -> str | None:
        call = self.dispatch(deployment, probe)
        try:
            async with asyncio.timeout(READY_TIMEOUT_S):
                answer = await _await(call)
        except TimeoutError:
            call.cancel()
            return f"the {deployment} deployment did not answer within {READY_TIMEOUT_S:g} s"
        except Exception as exc:
            return f"the {deployment} deployment is unavailable ({type(exc).__name__})"
        if answer.status == 200:
            return None
        return f"the {deployment} deployment is not ready: {_message(answer)}"

    async def _metrics(self, scope: Scope, receive: Receive, send: Send) -> None:
        """The local app's answer (its status, headers), with every replica's samples merged
        into its body."""
        request = ForwardedRequest.from_scope(scope, b"")
        own = await run_asgi(self.local, request)
        if own.status == 200:
            try:
                async with asyncio.timeout(READY_TIMEOUT_S):
                    others = await self.expositions()
            except Exception as exc:  # the board is restarting: say what this app has
                log.warning("replica metrics unavailable: %r", exc)
                others = []
            body = merge_expositions([self.metrics.render().decode(), *others]).encode()
            own.headers = [(k, v) for k, v in own.headers if k.lower() != b"content-length"]
            own.headers.append((b"content-length", str(len(body)).encode()))
            own.body = body if scope["method"] == "GET" else b""
        for message in own.messages():
            await send(message)


async def _await(call: Call) -> ForwardedResponse:
    return await call


def _retrieve(task: asyncio.Future) -> None:
    if not task.cancelled():
        task.exception()


async def _disconnected(receive: Receive) -> None:
    while (await receive())["type"] != "http.disconnect":
        pass


def _replay(read: bytes, receive: Receive) -> Receive:
    """``receive`` that first gives back the body already read, then the rest of the stream."""
    given = False

    async def replayed() -> Message:
        nonlocal given
        if not given:
            given = True
            return {"type": "http.request", "body": read, "more_body": True}
        return await receive()

    return replayed


def _error(path: str, error: ServiceError) -> ForwardedResponse:
    """``error`` as the answer to a request for ``path`` (whose API gives its shape)."""
    rendered = error_response(error.status, error.code, error.message, error.headers, path=path)
    return ForwardedResponse(
        status=rendered.status_code,
        headers=[(bytes(k), bytes(v)) for k, v in rendered.raw_headers],
        body=bytes(rendered.body),
    )


def _message(response: ForwardedResponse) -> str:
    try:
        return str(json.loads(response.body)["error"]["message"])
    except (ValueError, KeyError, TypeError):
        return f"HTTP {response.status}"
