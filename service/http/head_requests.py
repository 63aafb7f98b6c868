"""HEAD wherever GET works: health checkers and link checkers probe with HEAD.

FastAPI routes declared with ``@router.get`` answer HEAD with 405. ``HeadAsGetMiddleware``
runs a HEAD request as the GET it stands for and drops the response body, keeping the status
and headers (``Content-Length`` included), as RFC 9110 asks. A path without GET still answers
405 ``method_not_allowed``. Static files already answer HEAD themselves and behave the same.
A route whose GET streams until something ends (a job's events) reads ``HEAD_KEY`` in the scope
and answers at once with the stream's headers instead.
"""

from __future__ import annotations

from starlette.types import ASGIApp, Message, Receive, Scope, Send

HEAD_KEY = "celebxai.head"
"""in the scope of a HEAD request run as its GET: True"""


class HeadAsGetMiddleware:
    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["method"] != "HEAD":
            await self.app(scope, receive, send)
            return

        async def send_without_body(message: Message) -> None:
            if message["type"] == "http.response.body":
                if message.get("more_body", False):
                    return  # nothing of the body goes out; only its end does
                message = {"type": "http.response.body", "body": b"", "more_body": False}
            await send(message)

        await self.app({**scope, "method": "GET", HEAD_KEY: True}, receive, send_without_body)
