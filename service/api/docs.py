"""GET /docs: Swagger UI for this API, served entirely by the service (it works offline).

FastAPI's own /docs loads Swagger UI from a CDN at a floating version and starts it with an
inline script. Here the Swagger UI 5 files come from the ``fastapi-offline`` package, pinned in
pyproject.toml, under /docs/assets; the page (``static/docs.html``) and its start-up script
(``static/docs.js``) name no other host and hold no inline script, so they run under the
service's Content-Security-Policy (``security_headers``). ReDoc is not offered.
"""

from __future__ import annotations

from importlib.util import find_spec
from pathlib import Path

from fastapi import APIRouter
from fastapi.responses import FileResponse

from service.api.page import NO_CACHE, STATIC_DIR, RevalidatedStaticFiles
from service.api.placement import ON_GATEWAY

DOCS_PAGE = STATIC_DIR / "docs.html"


def swagger_ui_dir() -> Path:
    """The Swagger UI files (swagger-ui-bundle.js, swagger-ui.css, favicon.png) shipped by the
    ``fastapi-offline`` package, found without importing it."""
    spec = find_spec("fastapi_offline")
    if spec is None or not spec.submodule_search_locations:
        raise RuntimeError("fastapi-offline is not installed: pip install -e . installs it")
    return Path(spec.submodule_search_locations[0]) / "static"


router = APIRouter(tags=["docs"], dependencies=[ON_GATEWAY])
router.mount("/docs/assets", RevalidatedStaticFiles(directory=swagger_ui_dir()), name="docs-assets")


@router.get("/docs", include_in_schema=False)
async def docs() -> FileResponse:
    """Swagger UI: every endpoint with its parameters, schemas and a form to try it."""
    return FileResponse(DOCS_PAGE, media_type="text/html", headers=NO_CACHE)
