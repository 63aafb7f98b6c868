"""CORS whose refusals are JSON like every other error.

Starlette's ``CORSMiddleware`` answers a preflight it refuses (an origin, method or header not
allowed) with a plain-text 400. This subclass answers 403 ``cors_refused`` in the service's
error shape instead, saying what was not allowed (403: the request is understood, and refused;
a browser only needs a status that is not 2xx).
"""

from __future__ import annotations

from contextvars import ContextVar

from starlette.datastructures import Headers
from starlette.middleware.cors import CORSMiddleware
from starlette.responses import Response
from starlette.types import Receive, Scope, Send

from service.errors import CorsRefused
from service.http.errors import error_response

# the path of the request in hand: a refusal under /v2 takes the protocol's error shape
_PATH: ContextVar[str] = ContextVar("cors_path", default="")


class JsonCORSMiddleware(CORSMiddleware):
    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        token = _PATH.set(scope.get("path", "")) if scope["type"] == "http" else None
        try:
            await super().__call__(scope, receive, send)
        finally:
            if token is not None:
                _PATH.reset(token)

    def preflight_response(self, request_headers: Headers) -> Response:
        response = super().preflight_response(request_headers)
        if response.status_code < 400:
            return response
        # Starlette's text is "Disallowed CORS origin, method, headers" (those that failed).
        refused = bytes(response.body).decode(errors="replace").removeprefix("Disallowed CORS ")
        error = CorsRefused(f"CORS preflight refused: {refused.strip()} not allowed")
        return error_response(
            error.status, error.code, error.message, _cors_headers(response), path=_PATH.get()
        )


def _cors_headers(response: Response) -> dict[str, str]:
    """The refusal's CORS headers (Vary, Access-Control-*), without its plain-text framing."""
    return {
        name: value
        for name, value in response.headers.items()
        if name.lower() not in ("content-length", "content-type")
    }
