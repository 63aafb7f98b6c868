"""The web page in real headless Chromium against the real service: upload, prediction,
explanations, errors, and a phone-sized layout. Screenshots go to tests/artifacts/browser/."""

from __future__ import annotations

from pathlib import Path
from urllib.parse import parse_qs, urlsplit

import pytest
from PIL import Image

# a live service and headless Chromium (tests/browser/conftest.py)
pytestmark = pytest.mark.browser

SETTLED = """() => {
  const panels = [...document.querySelectorAll('.panel')];
  return panels.length > 0 && panels.every((p) => ['done', 'error'].includes(p.dataset.state));
}"""
NOT_AN_IMAGE = {"name": "notes.txt", "mimeType": "text/plain", "buffer": b"this is not a photo\n"}


def enter_api_key(page, key: str) -> None:
    page.click("#key-box summary")
    page.fill("#api-key", key)
    page.press("#api-key", "Enter")


def show_explanations(page, photo: Path, methods: list[str]) -> None:
    """Upload ``photo``, wait for the label and for every panel to settle, and check that the
    page shows one panel per listed method, in order, each finished without an error."""
    page.set_input_files("#file", str(photo))
    page.wait_for_selector("#label[data-label]")
    page.wait_for_function(SETTLED)
    states = page.eval_on_selector_all(
        ".panel",
        "ps => ps.map(p => [p.dataset.method, p.dataset.state,"
        " p.querySelector('[role=alert]').innerText])",
    )
    assert [method for method, _, _ in states] == methods
    assert all(state == "done" for _, state, _ in states), states


def overlay_sizes(page) -> dict[str, list[int]]:
    return dict(
        page.eval_on_selector_all(
            ".panel",
            """ps => ps.map(p => {
                 const img = p.querySelector('img.heat');
                 const size = [img.naturalWidth, img.naturalHeight];
                 return [p.dataset.method, img.complete ? size : [0, 0]];
               })""",
        )
    )


def test_face_photo_shows_label_boxes_and_every_overlay(
    open_page, live_service, recognised_face, artifacts, methods, listed
):
    photo, class_id = recognised_face.path, recognised_face.class_id
    session = open_page(viewport={"width": 1366, "height": 900})
    page = session.page
    enter_api_key(page, live_service.api_key)

    show_explanations(page, photo, methods)

    assert page.get_attribute("#label", "data-label") == class_id
    assert page.locator("#bars button").count() == 8
    detected = recognised_face.prediction["face_box"]["source"] != "whole_image"
    assert page.locator("#boxes rect.used-face").count() == int(detected)
    size = Image.open(photo).size
    assert overlay_sizes(page) == {method: list(size) for method in methods}
    legends = page.eval_on_selector_all(
        ".panel",
        "ps => ps.map(p => [p.dataset.method,"
        " p.querySelector('.legend').classList.contains('signed'),"
        " p.querySelector('.teaches').innerText])",
    )
    assert legends == [[m["name"], m["signed"], m["shows"]] for m in listed]
    page.wait_for_function("document.querySelector('.status').dataset.state === 'ready'")
    page.screenshot(path=artifacts / "page.png", full_page=True)
    assert session.console_errors == []


def test_controls_are_labelled_and_rerun_sends_the_parameters(
    open_page, live_service, recognised_face, methods
):
    photo, class_id = recognised_face.path, recognised_face.class_id
    page = open_page().page
    enter_api_key(page, live_service.api_key)
    show_explanations(page, photo, methods)

    unlabelled = page.eval_on_selector_all(
        "input, select", "els => els.filter(e => e.labels.length === 0).map(e => e.outerHTML)"
    )
    assert unlabelled == []
    assert (
        page.eval_on_selector_all("img", "imgs => imgs.filter(i => !i.hasAttribute('alt')).length")
        == 0
    )

    panel = page.locator(".panel[data-method=occlusion]")
    panel.locator("input[type=range]").fill("40")
    assert panel.locator("img.heat").evaluate("img => img.style.opacity") == "0.4"
    choices = panel.locator("select[name=target] option").evaluate_all("os => os.map(o => o.value)")
    other = next(choice for choice in choices if choice not in ("", class_id))
    panel.locator("select[name=target]").select_option(other)
    panel.locator("input[name=window]").fill("32")
    panel.locator("input[name=stride]").fill("40")  # within its bounds, but wider than the window
    panel.locator("button[type=submit]").click()
    panel.locator("[role=alert]").wait_for(state="visible")
    assert "not accepted" in panel.locator("[role=alert]").inner_text()

    panel.locator("input[name=stride]").fill("16")
    # occlusion refines its map as it samples: the page runs it as a job
    with page.expect_response(lambda r: "/jobs/occlusion?" in r.url) as answer:
        panel.locator("button[type=submit]").click()
    assert answer.value.status == 202
    query = parse_qs(urlsplit(answer.value.url).query)
    assert {name: query[name] for name in ("window", "stride", "target")} == {
        "window": ["32"],
        "stride": ["16"],
        "target": [other],
    }
    page.wait_for_function(SETTLED)
    assert panel.get_attribute("data-state") == "done"


def test_choosing_a_class_bar_explains_it_in_every_panel(
    open_page, live_service, recognised_face, methods
):
    page = open_page().page
    enter_api_key(page, live_service.api_key)
    show_explanations(page, recognised_face.path, methods)
    runner_up = page.locator("#bars button").nth(1)
    class_id, name = (
        runner_up.get_attribute("data-class-id"),
        runner_up.locator(".name").inner_text(),
    )

    runner_up.click()

    assert runner_up.get_attribute("aria-pressed") == "true"
    page.wait_for_function(SETTLED)
    assert page.locator(".panel select[name=target]").evaluate_all(
        "ss => ss.map(s => s.value)"
    ) == [class_id] * len(methods)
    assert page.locator(".panel[data-state=done]").count() == len(methods)
    assert page.locator(".legend .target").all_inner_texts() == [name] * len(methods)


def test_invalid_file_shows_an_error_in_plain_words(open_page, live_service):
    page = open_page().page
    enter_api_key(page, live_service.api_key)

    page.set_input_files("#file", files=[NOT_AN_IMAGE])

    error = page.locator("#error")
    error.wait_for(state="visible")
    assert "not a photo the service can read" in error.inner_text()
    assert "unsupported_format" in error.inner_text()
    assert page.locator("#result").is_hidden()


def test_missing_api_key_asks_for_it(open_page, recognised_face):
    page = open_page().page

    page.set_input_files("#file", str(recognised_face.path))

    page.locator("#error").wait_for(state="visible")
    assert "needs an API key" in page.locator("#error").inner_text()
    assert page.locator("#key-box").evaluate("box => box.open")
    assert page.evaluate("document.activeElement.id") == "api-key"


def test_phone_layout_has_no_sideways_scrolling(
    open_page, live_service, recognised_face, artifacts, methods
):
    photo, class_id = recognised_face.path, recognised_face.class_id
    page = open_page(
        viewport={"width": 390, "height": 844},
        device_scale_factor=2,
        is_mobile=True,
        has_touch=True,
    ).page
    enter_api_key(page, live_service.api_key)

    show_explanations(page, photo, methods)

    assert page.get_attribute("#label", "data-label") == class_id
    assert page.evaluate("document.documentElement.scrollWidth <= window.innerWidth")
    page.screenshot(path=artifacts / "page-phone.png", full_page=True)


def test_detected_faces_and_unknown_verdict_are_drawn(open_page, live_service, recognised_face):
    """The page draws every detected face and the open-set verdict of a /predict answer (the
    service's real answer for the photo with those fields set, so the drawing is checked
    whatever the model and the detector say)."""
    page = open_page().page
    enter_api_key(page, live_service.api_key)
    used = {"x": 20, "y": 16, "width": 64, "height": 72}
    answer = {
        **recognised_face.prediction,
        "face_box": {**used, "source": "detector"},
        "faces": [
            {**used, "score": 0.97},
            {"x": 2, "y": 2, "width": 20, "height": 20, "score": 0.41},
        ],
        "open_set": {"known": False, "score": 0.31, "threshold": 0.5},
    }
    # with or without model= (the page names the chosen model once it has read GET /models)
    page.route(
        lambda url: urlsplit(url).path == "/predict", lambda route: route.fulfill(json=answer)
    )

    page.set_input_files("#file", str(recognised_face.path))
    page.wait_for_selector("#label[data-label]")

    drawn = page.locator("#boxes rect.used-face")
    assert [drawn.get_attribute(key) for key in used] == [str(value) for value in used.values()]
    assert page.locator("#boxes rect.other-face").count() == 1
    assert "detector score 0.97" in page.locator("#face-caption").inner_text()
    assert page.locator("#verdict").inner_text().startswith("Unknown")
    assert page.locator("#label").inner_text().startswith("closest: ")
