"""Long explanations on the page run as jobs: a progress bar, the map redrawn as it refines,
and a Cancel button that stops the work on the service. Real headless Chromium, real service."""

from __future__ import annotations

import httpx
import pytest
from PIL import Image

from tests.browser.test_page import SETTLED, enter_api_key, show_explanations

# a live service and headless Chromium (tests/browser/conftest.py)
pytestmark = pytest.mark.browser

LIME = ".panel[data-method=lime]"


def test_a_long_lime_map_refines_live_with_progress_then_ends_as_the_service_draws_it(
    open_page, live_service, recognised_face, artifacts, methods
):
    session = open_page(viewport={"width": 1366, "height": 900})
    page = session.page
    enter_api_key(page, live_service.api_key)
    show_explanations(page, recognised_face.path, methods)
    panel = page.locator(LIME)
    panel.locator("input[name=num_samples]").fill("1000")

    panel.locator("button[type=submit]").click()
    panel.locator("progress").wait_for(state="visible")
    assert panel.locator("[data-part=cancel]").is_visible()
    # the map changes at least twice while the job runs
    page.wait_for_function(
        "p => Number(document.querySelector(p).dataset.partials ?? 0) >= 2", arg=LIME
    )
    assert panel.get_attribute("data-state") == "busy"
    progress = float(panel.locator("progress").evaluate("p => p.value"))
    assert 0 < progress < 1
    assert "%" in panel.locator(".timing").inner_text()
    page.screenshot(path=artifacts / "page-job-mid-run.png", full_page=True)

    page.wait_for_function(SETTLED)
    assert panel.get_attribute("data-state") == "done"
    assert int(panel.get_attribute("data-partials")) >= 2
    assert panel.locator("progress").is_hidden() and panel.locator("[data-part=cancel]").is_hidden()
    # the final map is the service's PNG at the photo's size, as for every other panel
    natural = panel.locator("img.heat").evaluate("i => [i.naturalWidth, i.naturalHeight]")
    assert natural == list(Image.open(recognised_face.path).size)
    job = panel.get_attribute("data-job")
    status = httpx.get(
        f"{live_service.url}/jobs/{job}", headers={"X-API-Key": live_service.api_key}
    ).json()
    assert status["state"] == "done" and status["parameters"]["num_samples"] == 1000
    assert session.console_errors == []


def test_cancel_stops_the_job_on_the_service(open_page, live_service, recognised_face, methods):
    page = open_page().page
    enter_api_key(page, live_service.api_key)
    show_explanations(page, recognised_face.path, methods)
    panel = page.locator(LIME)
    panel.locator("input[name=num_samples]").fill("2000")

    panel.locator("button[type=submit]").click()
    page.wait_for_function(
        "p => Number(document.querySelector(p).dataset.partials ?? 0) >= 1", arg=LIME
    )
    panel.locator("[data-part=cancel]").click()

    page.wait_for_function("p => document.querySelector(p).dataset.state === 'cancelled'", arg=LIME)
    assert panel.locator("[role=alert]").inner_text().startswith("Cancelled.")
    status = httpx.get(
        f"{live_service.url}/jobs/{panel.get_attribute('data-job')}",
        headers={"X-API-Key": live_service.api_key},
    ).json()
    assert status["state"] == "cancelled" and status["progress"] < 0.5
