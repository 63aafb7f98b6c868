"""The page's "Model insight" tab, without a browser: the page loads its module and style, and
every /insight path the module calls is served by the API."""

from __future__ import annotations

import re

from fastapi.testclient import TestClient

from service.app import openapi_yaml


def test_page_hooks_in_the_insight_tab(client: TestClient):
    page = TestClient(client.app).get("/").text  # the page needs no API key

    assert '<script type="module" src="/static/insight.js"></script>' in page
    assert '<link rel="stylesheet" href="/static/insight.css">' in page
    assert '<section id="insight"' in page


def test_every_insight_path_the_tab_calls_exists(client: TestClient):
    module = TestClient(client.app).get("/static/insight.js")
    assert module.status_code == 200

    called = set(re.findall(r"`(/insight/[a-z-]+)\?", module.text)) | set(
        re.findall(r'"(/insight/[a-z-]+)"', module.text)
    )
    assert called == {
        "/insight/receptive-field",
        "/insight/filters",
        "/insight/activations",
        "/insight/top-patches",
        "/insight/maximize",
    }
    served = set(re.findall(r"^  (/insight/[a-z-]+):$", openapi_yaml(), re.MULTILINE))
    assert called <= served
