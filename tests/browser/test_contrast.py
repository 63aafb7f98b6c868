"""The page's "Why not …?" choice and its stranger check, in real headless Chromium against the
real service: choosing a class redraws every panel as a contrast (the same requests with
``contrast=``, captions that say so, other maps, graded lights) and "none" brings the plain maps
back; a held-out stranger opens "Why none of the 8?" with the open-set map and the nearest
training faces, whose thumbnails load; a known face shows it only when asked."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest
from PIL import Image

from tests.browser.test_page import SETTLED, enter_api_key, show_explanations
from tests.browser.test_quality_light import api_answer, explanation_queries

# a live service and headless Chromium (tests/browser/conftest.py)
pytestmark = pytest.mark.browser

VERDICTS = {"strong", "weak", "unreliable"}
OPEN_SET_PANEL = ".open-set-panel"
OPEN_SET_SETTLED = f"""() => {{
  const panel = document.querySelector('{OPEN_SET_PANEL}');
  return panel !== null && ['done', 'error'].includes(panel.dataset.state);
}}"""
# every panel's map as the browser decoded it (the service's PNG), comparable across runs
MAPS = """ps => Object.fromEntries(ps.map((p) => {
  const img = p.querySelector('img.heat');
  const canvas = document.createElement('canvas');
  canvas.width = img.naturalWidth;
  canvas.height = img.naturalHeight;
  canvas.getContext('2d').drawImage(img, 0, 0);
  return [p.dataset.method, canvas.toDataURL()];
}))"""
CAPTIONS = """ps => Object.fromEntries(ps.map((p) => [p.dataset.method,
  [p.dataset.explains, p.querySelector('[data-part=explains]').innerText,
   p.querySelector('.quality').dataset.verdict]]))"""
# every panel has drawn a map that explains ``kind`` (class, contrast): set once its map is shown
EXPLAINING = "k => [...document.querySelectorAll('.panel')].every(p => p.dataset.explains === k)"
THUMBNAILS_LOADED = """() => {
  const images = [...document.querySelectorAll('#stranger img.thumbnail')];
  return images.length > 0 && images.every((img) => img.complete && img.naturalWidth > 0);
}"""


@dataclass(frozen=True)
class Stranger:
    path: Path
    prediction: dict  # the service's /predict answer for it


@pytest.fixture(scope="module")
def stranger(live_service, default_bundle: Path, data_root: Path) -> Stranger:
    """A photo of a held-out stranger (meta.json open_set.held_out: identities never trained
    on) that the service calls none of the classes."""
    held_out = json.loads((default_bundle / "meta.json").read_text())["open_set"]["held_out"]
    headers = {"X-API-Key": live_service.api_key}
    for identity in held_out["unknown_identities"]:
        for path in sorted((data_root / "others" / identity).glob("*.png"))[:5]:
            with path.open("rb") as photo:
                response = httpx.post(
                    f"{live_service.url}/predict",
                    files={"file": photo},
                    headers=headers,
                    timeout=60,
                )
            response.raise_for_status()
            if response.json()["open_set"]["known"] is False:
                return Stranger(path, response.json())
    pytest.fail("the service took every held-out stranger tried for one of the classes")


def test_why_not_redraws_every_panel_as_a_contrast_and_none_restores_the_plain_maps(
    open_page, live_service, recognised_face, artifacts, methods, listed
):
    session = open_page(viewport={"width": 1366, "height": 900})
    page = session.page
    enter_api_key(page, live_service.api_key)
    show_explanations(page, recognised_face.path, methods)
    predicted = recognised_face.prediction["name"]
    plain = page.eval_on_selector_all(".panel", MAPS)
    captions = page.eval_on_selector_all(".panel", CAPTIONS)
    assert {method: caption[:2] for method, caption in captions.items()} == {
        method: ["class", f"Why {predicted}"] for method in methods
    }
    # every class but the predicted one, after "none"
    offered = page.locator("#contrast option").evaluate_all("os => os.map(o => o.value)")
    others = [c["id"] for c in recognised_face.prediction["probabilities"][1:]]
    assert offered[0] == "" and sorted(offered[1:]) == sorted(others)
    assert "prefer one class over the other" in page.locator("#contrast-teaches").inner_text()
    runner_up = recognised_face.prediction["probabilities"][1]
    queries = explanation_queries(page)

    page.select_option("#contrast", runner_up["id"])
    page.wait_for_function(EXPLAINING, arg="contrast")
    page.wait_for_function(SETTLED)

    # the same requests as the plain maps, sync and jobs alike, each with the contrast
    assert {query["path"].rsplit("/", 1)[1] for query in queries} == set(methods)
    assert all(query.get("contrast") == [runner_up["id"]] for query in queries), queries
    assert {query["path"].split("/")[1] for query in queries} == {"explain", "jobs"}
    captions = page.eval_on_selector_all(".panel", CAPTIONS)
    why = f"Why {predicted} and not {runner_up['name']}"
    assert {method: caption[:2] for method, caption in captions.items()} == {
        method: ["contrast", why] for method in methods
    }
    assert page.locator(".panel[data-state=done]").count() == len(methods)
    contrasted = page.eval_on_selector_all(".panel", MAPS)
    assert [m for m in methods if contrasted[m] == plain[m]] == []
    # the lights grade the contrast maps: the API's verdict for the same contrast
    assert all(caption[2] in VERDICTS for caption in captions.values()), captions
    at_once = next(m["name"] for m in listed if not m["anytime"])
    as_job = next(m["name"] for m in listed if m["anytime"])
    for method in (at_once, as_job):
        answer = api_answer(
            live_service, recognised_face.path, method, True, contrast=runner_up["id"]
        )
        assert answer["explains"]["kind"] == "contrast"
        assert captions[method][2] == answer["quality"]["verdict"]
    assert page.locator(".panel select[name=contrast]").evaluate_all(
        "ss => ss.map(s => s.value)"
    ) == [runner_up["id"]] * len(methods)
    page.screenshot(path=artifacts / "page-contrast.png", full_page=True)
    queries.clear()

    page.select_option("#contrast", "")
    page.wait_for_function(EXPLAINING, arg="class")
    page.wait_for_function(SETTLED)

    assert {query["path"].rsplit("/", 1)[1] for query in queries} == set(methods)
    assert all("contrast" not in query for query in queries), queries
    captions = page.eval_on_selector_all(".panel", CAPTIONS)
    assert {method: caption[1] for method, caption in captions.items()} == {
        method: f"Why {predicted}" for method in methods
    }
    assert page.eval_on_selector_all(".panel", MAPS) == plain
    assert session.console_errors == []


def test_a_stranger_shows_why_none_of_the_8_with_the_open_set_map_and_the_nearest_faces(
    open_page, live_service, stranger, artifacts
):
    session = open_page(viewport={"width": 1366, "height": 900})
    page = session.page
    enter_api_key(page, live_service.api_key)
    queries = explanation_queries(page)
    open_set = stranger.prediction["open_set"]
    evidence = open_set["evidence"]
    count = len(stranger.prediction["probabilities"])

    page.set_input_files("#file", str(stranger.path))
    page.locator("#stranger").wait_for(state="visible")
    page.wait_for_function(OPEN_SET_SETTLED)
    page.wait_for_function(THUMBNAILS_LOADED)

    assert page.locator("#stranger-title").inner_text() == f"Why none of the {count}?"
    assert page.locator("#stranger-toggle").get_attribute("aria-expanded") == "true"
    # the map: the open-set score asked of the service, drawn over the photo, graded
    panel = page.locator(OPEN_SET_PANEL)
    assert panel.get_attribute("data-state") == "done"
    asked = [query for query in queries if query.get("target") == ["open_set"]]
    assert len(asked) >= 1 and all("contrast" not in query for query in asked), queries
    # the score's flavour left to the service (its log-odds: the probability is flat here)
    assert all("score" not in query for query in asked), queries
    assert panel.get_attribute("data-explains") == "open_set"
    assert panel.locator("[data-part=explains]").inner_text() == (
        f"Why one of the {count}, or none: the open-set score"
    )
    natural = panel.locator("img.heat").evaluate("i => [i.naturalWidth, i.naturalHeight]")
    assert natural == list(Image.open(stranger.path).size)
    assert panel.locator(".quality").get_attribute("data-verdict") in VERDICTS
    # what the score is: its parts and the threshold, as /predict gave them
    teaches = page.locator("#stranger [data-part=score]").inner_text()
    cosine = open_set["parts"]["nearest_training_face_cosine"]
    assert f"nearest training face ({cosine:.2f})" in teaches, teaches
    assert f"largest class probability ({open_set['parts']['max_softmax_probability']:.2f})" in (
        teaches
    )
    assert f"below the threshold {open_set['threshold']:.2f}" in teaches
    assert f"none of the {count}" in teaches
    # the nearest training faces: per class, in the answer's order, with their cosines
    rows = page.eval_on_selector_all(
        "#stranger .class-evidence",
        """rs => rs.map((r) => [r.dataset.classId, r.querySelector('.name').innerText,
             [...r.querySelectorAll('.face')].map((f) => [f.dataset.file,
               f.querySelector('.cosine').innerText])])""",
    )
    assert rows == [
        [
            entry["class_id"],
            entry["name"],
            [[face["file"], f"cosine {face['cosine']:.3f}"] for face in entry["faces"]],
        ]
        for entry in evidence["per_class"]
    ]
    nearest = page.locator("#stranger .face.nearest")
    assert nearest.count() == 1
    assert nearest.get_attribute("data-file") == evidence["nearest"]["file"]
    assert "nearest of all" in nearest.inner_text()
    # every thumbnail is the service's picture of that file, loaded with the API key
    faces = sum(len(entry["faces"]) for entry in evidence["per_class"])
    loaded = page.eval_on_selector_all(
        "#stranger img.thumbnail", "is => is.map((i) => i.naturalWidth)"
    )
    assert len(loaded) == faces and min(loaded) > 0
    page.wait_for_function(SETTLED)
    page.screenshot(path=artifacts / "page-stranger.png", full_page=True)
    assert session.console_errors == []


def test_a_known_face_shows_the_stranger_check_only_when_asked(
    open_page, live_service, recognised_face, methods
):
    page = open_page().page
    enter_api_key(page, live_service.api_key)
    queries = explanation_queries(page)
    count = len(recognised_face.prediction["probabilities"])
    assert recognised_face.prediction["open_set"]["known"] is True

    show_explanations(page, recognised_face.path, methods)

    toggle = page.locator("#stranger-toggle")
    assert page.locator("#stranger").is_hidden()
    assert page.locator(OPEN_SET_PANEL).count() == 0
    assert all(query.get("target") != ["open_set"] for query in queries), queries
    assert toggle.get_attribute("aria-expanded") == "false"
    assert toggle.inner_text() == f"Why one of the {count}, not a stranger?"

    toggle.click()

    page.locator("#stranger").wait_for(state="visible")
    page.wait_for_function(OPEN_SET_SETTLED)
    assert page.locator(OPEN_SET_PANEL).get_attribute("data-state") == "done"
    asked = [query["target"] for query in queries if "target" in query]
    assert asked and all(target == ["open_set"] for target in asked), queries
    assert page.locator("#stranger-title").inner_text() == (
        f"Why one of the {count}, not a stranger?"
    )
    teaches = page.locator("#stranger [data-part=score]").inner_text()
    assert "at or above the threshold" in teaches and f"one of the {count}" in teaches
    page.wait_for_function(THUMBNAILS_LOADED)
    assert page.locator("#stranger .face.nearest").count() == 1

    toggle.click()
    assert page.locator("#stranger").is_hidden()
    assert toggle.get_attribute("aria-expanded") == "false"


def test_a_class_bar_that_is_the_contrast_explains_that_class_plainly(
    open_page, live_service, recognised_face, methods
):
    """A class is no contrast to itself (the API refuses it): choosing the contrast's own bar
    explains that class with plain maps, and "Why not …?" then offers every other class."""
    page = open_page().page
    enter_api_key(page, live_service.api_key)
    show_explanations(page, recognised_face.path, methods)
    predicted = recognised_face.prediction["probabilities"][0]
    runner_up = recognised_face.prediction["probabilities"][1]
    page.select_option("#contrast", runner_up["id"])
    page.wait_for_function(EXPLAINING, arg="contrast")
    page.wait_for_function(SETTLED)

    page.locator(f"#bars button[data-class-id={runner_up['id']}]").click()
    page.wait_for_function(EXPLAINING, arg="class")
    page.wait_for_function(SETTLED)

    assert page.locator("#contrast").input_value() == ""
    offered = page.locator("#contrast option").evaluate_all("os => os.map(o => o.value)")
    assert runner_up["id"] not in offered and predicted["id"] in offered
    captions = page.eval_on_selector_all(".panel", CAPTIONS)
    assert {method: caption[1] for method, caption in captions.items()} == {
        method: f"Why {runner_up['name']}" for method in methods
    }
    assert page.locator(".panel select[name=contrast]").evaluate_all(
        "ss => ss.map(s => [s.value, s.querySelector('option:disabled').value])"
    ) == [["", runner_up["id"]]] * len(methods)
    assert page.locator(".panel[data-state=done]").count() == len(methods)
