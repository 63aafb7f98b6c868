"""GET /: the web page and every asset it loads are served, without an API key."""

from __future__ import annotations

import re

import pytest
from fastapi.testclient import TestClient

MEDIA_TYPES = {
    ".html": "text/html",
    ".js": "text/javascript",
    ".css": "text/css",
    ".svg": "image/svg+xml",
}


@pytest.fixture(scope="module")
def anonymous(client: TestClient) -> TestClient:
    """A client of the same app that sends no API key (the page itself needs none)."""
    return TestClient(client.app)


def _assets(anonymous: TestClient) -> set[str]:
    """Every /static path the page references, following JavaScript module imports."""
    page = anonymous.get("/").text
    pending = set(re.findall(r'(?:href|src)="(/static/[^"]+)"', page))
    seen: set[str] = set()
    while pending:
        path = pending.pop()
        seen.add(path)
        if path.endswith(".js"):
            for name in re.findall(r'from "\./([\w-]+\.js)"', anonymous.get(path).text):
                if f"/static/{name}" not in seen:
                    pending.add(f"/static/{name}")
    return seen


def test_page_is_served_without_an_api_key(anonymous):
    response = anonymous.get("/")

    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/html")
    assert '<script type="module" src="/static/app.js">' in response.text
    assert response.headers["cache-control"] == "no-cache"


def test_every_asset_the_page_loads_is_served(anonymous):
    assets = _assets(anonymous)

    assert {
        "/static/app.js",
        "/static/style.css",
        "/static/favicon.svg",
        "/static/api.js",
    } <= assets
    for path in sorted(assets):
        response = anonymous.get(path)
        assert response.status_code == 200, path
        suffix = path[path.rindex(".") :]
        assert response.headers["content-type"].startswith(MEDIA_TYPES[suffix]), path
        assert response.headers["cache-control"] == "no-cache", path


def test_missing_asset_is_a_json_404(anonymous):
    response = anonymous.get("/static/missing.js")

    assert response.status_code == 404
    assert response.json()["error"]["code"] == "not_found"
