"""The API key: one check, applied before a protected request's body is read.

FastAPI resolves dependencies only after it has read and parsed the whole multipart body, so a
dependency alone would let a client without a key make the service receive and parse a 10 MB
upload before refusing it. ``ApiKeyFirstMiddleware`` therefore refuses such a request from its
headers alone, before any byte of its body is read, and closes the connection when a body was
announced (so the client need not send it). Which operations are protected is not listed here:
those whose OpenAPI operation requires the ``X-API-Key`` scheme, which ``deps.api_key_guard``
declares on every route it guards (the guard also checks again in-process). The document
clients read and the middleware's list cannot disagree.
"""

from __future__ import annotations

import re
import secrets

from pydantic import SecretStr
from starlette.datastructures import Headers
from starlette.routing import compile_path
from starlette.types import ASGIApp, Receive, Scope, Send

from service.errors import InvalidApiKey, MissingApiKey, ServiceError
from service.http.body_limit import length_of
from service.http.errors import error_response

API_KEY_HEADER = "X-API-Key"
# FastAPI names the scheme after the security class (``fastapi.security.APIKeyHeader``).
API_KEY_SCHEME = "APIKeyHeader"


def verify_api_key(expected: SecretStr | None, presented: str | None) -> None:
    """Raise 401 ``missing_api_key``/``invalid_api_key`` unless ``presented`` is one of the
    ``expected`` keys (one key, or several separated by commas: one per client; nothing to check
    when none is configured). Each key is compared in constant time, and all of them always."""
    if expected is None:
        return
    if not presented:
        raise MissingApiKey(f"this service requires an API key in the {API_KEY_HEADER} header")
    given = presented.encode()
    matches = [secrets.compare_digest(given, key.encode()) for key in api_keys(expected)]
    if not any(matches):
        raise InvalidApiKey(f"the {API_KEY_HEADER} header does not hold a valid API key")


def api_keys(configured: SecretStr) -> list[str]:
    """The keys of the ``api_key`` setting: comma-separated, surrounding spaces dropped."""
    return [key.strip() for key in configured.get_secret_value().split(",")]


def announces_body(headers: Headers) -> bool:
    """Whether the request says a body follows (a non-zero length, or chunked)."""
    length = length_of(headers.get("content-length", "0"))
    return (length is not None and length > 0) or "transfer-encoding" in headers


def protected_operations(openapi: dict) -> list[tuple[str, re.Pattern[str]]]:
    """(method, path regex) of every operation in ``openapi`` that requires the API key."""
    found = []
    for path, operations in openapi.get("paths", {}).items():
        regex = compile_path(path)[0]
        for method, operation in operations.items():
            requirements = operation.get("security", []) if isinstance(operation, dict) else []
            if any(API_KEY_SCHEME in requirement for requirement in requirements):
                found.append((method.upper(), regex))
    return found


class ApiKeyFirstMiddleware:
    """401 for a request to a protected operation without the configured key, from its headers.

    The operations come from the OpenAPI document of the app that runs this middleware
    (``scope["app"]``), read once, at its first request.
    """

    def __init__(self, app: ASGIApp, api_key: SecretStr | None) -> None:
        self.app = app
        self.api_key = api_key
        self._protected: list[tuple[str, re.Pattern[str]]] | None = None

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or self.api_key is None or not self._is_protected(scope):
            await self.app(scope, receive, send)
            return
        headers = Headers(scope=scope)
        try:
            verify_api_key(self.api_key, headers.get(API_KEY_HEADER))
        except ServiceError as error:
            extra = {"Connection": "close"} if announces_body(headers) else None
            response = error_response(
                error.status, error.code, error.message, extra, path=scope["path"]
            )
            await response(scope, receive, send)
            return
        await self.app(scope, receive, send)

    def _is_protected(self, scope: Scope) -> bool:
        if self._protected is None:
            self._protected = protected_operations(scope["app"].openapi())
        method, path = scope["method"], scope["path"]
        return any(method == m and regex.match(path) for m, regex in self._protected)
