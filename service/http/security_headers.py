"""Security headers on every response: the page, its scripts, the API docs, images, JSON.

- ``X-Content-Type-Options: nosniff``: a browser takes each response as its declared type, so
  an upload echoed back (a PNG heatmap) can never run as a script or page.
- ``X-Frame-Options: DENY`` and CSP ``frame-ancestors 'none'``: no other site frames the page.
- ``Content-Security-Policy``: the page and ``/docs`` run only scripts and styles served by the
  service itself (no inline script, no other host). Images may be ``data:`` (Swagger UI's
  icons) and ``blob:`` (the page shows the chosen photo and heatmaps from blobs); the page
  also reads ``data:`` and ``blob:`` images back with ``fetch`` (the insight tab does).
- ``Referrer-Policy: no-referrer``: the page's URLs never leave with a request elsewhere.

A header the app set itself is left as it is.
"""

from __future__ import annotations

from starlette.datastructures import MutableHeaders
from starlette.types import ASGIApp, Message, Receive, Scope, Send

CONTENT_SECURITY_POLICY = "; ".join(
    [
        "default-src 'self'",
        "script-src 'self'",
        "style-src 'self'",
        "img-src 'self' data: blob:",
        "connect-src 'self' data: blob:",
        "object-src 'none'",
        "base-uri 'none'",
        "form-action 'self'",
        "frame-ancestors 'none'",
    ]
)
SECURITY_HEADERS = {
    "X-Content-Type-Options": "nosniff",
    "X-Frame-Options": "DENY",
    "Content-Security-Policy": CONTENT_SECURITY_POLICY,
    "Referrer-Policy": "no-referrer",
}


class SecurityHeadersMiddleware:
    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return

        async def send_with_headers(message: Message) -> None:
            if message["type"] == "http.response.start":
                headers = MutableHeaders(scope=message)
                for name, value in SECURITY_HEADERS.items():
                    headers.setdefault(name, value)
            await send(message)

        await self.app(scope, receive, send_with_headers)
