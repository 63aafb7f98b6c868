"""GET /: the web page, and its static assets under /static.

The page is plain HTML, CSS and JavaScript modules from ``service/static`` (no build step). It
talks to the service only through the public API, exactly as curl users do.
"""

from __future__ import annotations

from pathlib import Path

from fastapi import APIRouter
from fastapi.responses import FileResponse
from fastapi.staticfiles import StaticFiles
from starlette.responses import Response
from starlette.types import Scope

from service.api.placement import ON_GATEWAY

STATIC_DIR = Path(__file__).resolve().parents[1] / "static"
PAGE = STATIC_DIR / "index.html"
# Revalidate on every load (cheap: ETag), so a new version of the page is never mixed with
# cached modules of the old one.
NO_CACHE = {"Cache-Control": "no-cache"}


class RevalidatedStaticFiles(StaticFiles):
    """``StaticFiles`` whose responses tell the browser to revalidate before reuse."""

    async def get_response(self, path: str, scope: Scope) -> Response:
        response = await super().get_response(path, scope)
        response.headers.update(NO_CACHE)
        return response


router = APIRouter(tags=["page"], dependencies=[ON_GATEWAY])
router.mount("/static", RevalidatedStaticFiles(directory=STATIC_DIR), name="static")


@router.get(
    "/",
    summary="The web page",
    response_class=FileResponse,
    responses={200: {"content": {"text/html": {}}, "description": "the page (HTML)"}},
)
async def page() -> FileResponse:
    """Upload a photo, see the prediction and its explanations side by side (uses this API)."""
    return FileResponse(PAGE, media_type="text/html", headers=NO_CACHE)
