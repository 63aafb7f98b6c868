"""Every error as HTTP: ``{"error": {"code": ..., "message": ...}}`` with its status.

The one place where errors become responses: ``install_error_handlers`` renders the service's
own ``ServiceError``s, FastAPI's validation errors (422 ``validation_error``), Starlette's
404/405 and anything unexpected (500 ``internal_error``, logged) alike; the middlewares that
answer before the app does use ``error_response``.

Under the Open Inference Protocol's paths (``/v2``, and KServe's ``/v1/models/...:explain``)
the same errors, with the same statuses, take that protocol's shape instead:
``{"error": "<code>: <message>"}`` (``protocol_error_body``); ``error_response`` picks the shape
from the request's path.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from http import HTTPStatus

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.requests import ClientDisconnect

from service.errors import (
    HTTP_STATUS_CODES,
    INTERNAL_ERROR,
    VALIDATION_ERROR,
    ClientClosedRequest,
    ServiceError,
    describe_validation_errors,
)

log = logging.getLogger(__name__)


# Paths whose errors take the Open Inference Protocol's shape (``service.api.v2``).
PROTOCOL_PATH_PREFIXES = ("/v2/", "/v1/models/")
PROTOCOL_PATHS = ("/v2",)


def error_body(code: str, message: str) -> dict[str, dict[str, str]]:
    return {"error": {"code": code, "message": message}}


def protocol_error_body(code: str, message: str) -> dict[str, str]:
    """The Open Inference Protocol's error object: one string, which starts with the code."""
    return {"error": f"{code}: {message}"}


def speaks_protocol(path: str) -> bool:
    """Whether ``path`` is one of the Open Inference Protocol's (its errors take its shape)."""
    return path in PROTOCOL_PATHS or path.startswith(PROTOCOL_PATH_PREFIXES)


def error_response(
    status: int,
    code: str,
    message: str,
    headers: Mapping[str, str] | None = None,
    *,
    path: str = "",
) -> JSONResponse:
    """The error as a response, in the shape of the API that ``path`` belongs to."""
    body = (
        protocol_error_body(code, message) if speaks_protocol(path) else error_body(code, message)
    )
    return JSONResponse(body, status_code=status, headers=headers)


async def _service_error(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, ServiceError)
    return error_response(exc.status, exc.code, exc.message, exc.headers, path=request.url.path)


async def _http_error(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, StarletteHTTPException)
    if isinstance(exc.__cause__, ClientDisconnect):  # FastAPI's 400 for a body cut short
        gone = ClientClosedRequest("the client closed the connection during the upload")
        return await _service_error(request, gone)
    code = HTTP_STATUS_CODES.get(exc.status_code, f"http_{exc.status_code}")
    message = exc.detail if isinstance(exc.detail, str) else HTTPStatus(exc.status_code).phrase
    return error_response(exc.status_code, code, message, exc.headers, path=request.url.path)


async def _validation_error(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, RequestValidationError)
    message = describe_validation_errors(exc.errors()) or "invalid request"
    return error_response(422, VALIDATION_ERROR, message, path=request.url.path)


async def _unexpected_error(request: Request, exc: Exception) -> JSONResponse:
    log.exception("unhandled error on %s %s", request.method, request.url.path, exc_info=exc)
    return error_response(500, INTERNAL_ERROR, "internal server error", path=request.url.path)


def install_error_handlers(app: FastAPI) -> None:
    """Render every error of ``app`` in its API's JSON error shape."""
    app.add_exception_handler(ServiceError, _service_error)
    app.add_exception_handler(StarletteHTTPException, _http_error)
    app.add_exception_handler(RequestValidationError, _validation_error)
    app.add_exception_handler(Exception, _unexpected_error)
