"""The "Model insight" tab in real headless Chromium: filters, the photo's maps, top patches,
a synthesised class image."""

from __future__ import annotations

import pytest

from .test_page import enter_api_key

# a live service and headless Chromium (tests/browser/conftest.py)
pytestmark = pytest.mark.browser

LOADED = (
    "id => { const img = document.getElementById(id); "
    "return img.complete && img.naturalWidth > 0; }"
)


def test_insight_tab_shows_filters_maps_patches_and_a_synthesis(
    open_page, live_service, recognised_face, artifacts
):
    session = open_page(viewport={"width": 1366, "height": 900})
    page = session.page
    enter_api_key(page, live_service.api_key)
    page.set_input_files("#file", str(recognised_face.path))
    page.wait_for_selector("#label[data-label]")

    page.click("#tab-insight")
    for image in ("insight-filters", "insight-activations", "insight-patches"):
        page.wait_for_function(LOADED, arg=image)

    assert page.get_attribute("#tab-insight", "aria-selected") == "true"
    assert not page.is_visible("#result") and page.is_visible("#insight")
    size = (
        "id => [document.getElementById(id).naturalWidth, "
        "document.getElementById(id).naturalHeight]"
    )
    assert page.evaluate(size, "insight-filters") == [266, 266]  # the stem's 32 filters
    assert page.evaluate(size, "insight-patches") == [272, 272]  # 9 patches of 11 px, x8
    first_channel = page.inner_text("#insight-activations-caption").split()[1].rstrip(",")
    page.click("#insight-activations", position={"x": 5, "y": 5})  # the first (strongest) map
    assert page.input_value("#insight-channel") == first_channel
    page.select_option("#insight-class", recognised_face.class_id)
    page.click("#insight-maximize-class")  # a few seconds of gradient ascent on the service
    page.wait_for_function(LOADED, arg="insight-synthesis")
    assert page.evaluate(size, "insight-synthesis") == [150, 150]
    assert page.inner_text("#insight-synthesis-caption").startswith(
        f"class {recognised_face.class_id}: score"
    )
    page.screenshot(path=artifacts / "insight-tab.png", full_page=True)
    page.click("#tab-photo")
    assert page.is_visible("#result") and not page.is_visible("#insight")
    assert session.console_errors == []
