"""The model choice and the "Compare models" tab in real headless Chromium against the real
service serving two models (the default bundle and a copy of it under another name): the choice
changes which model answers /predict and every explanation; the compare view explains one photo
with both models and one method, side by side, with their labels, maps and map agreement."""

from __future__ import annotations

import math
import time
from urllib.parse import parse_qs, urlsplit

import httpx
import pytest
from PIL import Image

from tests.browser.test_page import SETTLED, enter_api_key, show_explanations
from tests.browser.test_quality_light import explanation_queries

# a live service and headless Chromium (tests/browser/conftest.py)
pytestmark = pytest.mark.browser

METHOD = "gradcam"  # one pass per map, answered at once: cheap on a shared CPU
COMPARED = "() => document.getElementById('compare').dataset.state === 'done'"
COLUMNS = """cs => cs.map((c) => {
  const heat = c.querySelector('.compare-panel img.heat');
  return {
    model: c.dataset.model,
    state: c.dataset.state,
    label: c.querySelector('.label').dataset.label,
    bars: c.querySelectorAll('.bar').length,
    method: c.querySelector('.compare-panel').dataset.method,
    map: heat.complete && !heat.hidden ? [heat.naturalWidth, heat.naturalHeight] : null,
  };
})"""
PAIRS = "ps => ps.map((p) => [p.dataset.models, p.dataset.rho, p.innerText])"


@pytest.fixture(scope="module")
def served(live_service) -> dict:
    """GET /models of the test service: the default model and at least one more."""
    answer = httpx.get(
        f"{live_service.url}/models", headers={"X-API-Key": live_service.api_key}, timeout=10
    )
    answer.raise_for_status()
    served = answer.json()
    if len(served["models"]) < 2:
        pytest.fail(f"the browser tests' service serves one model only: {served}")
    return served


@pytest.fixture(scope="module")
def other_model(served: dict) -> str:
    """A model that is not the service's default."""
    return next(model["name"] for model in served["models"] if not model["default"])


def requests_to(page, path: str) -> list[dict]:
    """The query of every request to ``path`` the page sends from now on."""
    seen: list[dict] = []
    page.on(
        "request",
        lambda r: urlsplit(r.url).path == path and seen.append(parse_qs(urlsplit(r.url).query)),
    )
    return seen


def test_the_model_choice_changes_which_model_answers(
    open_page, live_service, recognised_face, served, other_model, methods
):
    session = open_page(viewport={"width": 1366, "height": 900})
    page = session.page
    enter_api_key(page, live_service.api_key)
    predictions = requests_to(page, "/predict")
    default = served["default"]

    show_explanations(page, recognised_face.path, methods)

    # the choice lists every model with its test accuracy, the default chosen
    assert page.locator("#model-choice").is_visible()
    offered = page.locator("#model option").evaluate_all(
        "os => os.map(o => [o.value, o.textContent])"
    )
    assert [value for value, _ in offered] == [model["name"] for model in served["models"]]
    assert all("test accuracy" in text for _, text in offered), offered
    assert page.input_value("#model") == default
    assert page.get_attribute("#timings", "data-model") == default
    queries = explanation_queries(page)
    predictions.clear()

    page.select_option("#model", other_model)
    page.wait_for_selector(f"#timings[data-model='{other_model}']")
    # every panel has sent its request (a panel is busy from then on), then they all settle
    deadline = time.monotonic() + 60
    while {query["path"].rsplit("/", 1)[1] for query in queries} != set(methods):
        assert time.monotonic() < deadline, f"not every panel ran again: {queries}"
        page.wait_for_timeout(100)
    page.wait_for_function(SETTLED)

    assert page.locator("#timings").inner_text().startswith(f"model {other_model} ")
    assert predictions and all(query["model"] == [other_model] for query in predictions)
    # every panel asked the chosen model again
    assert {query["path"].rsplit("/", 1)[1] for query in queries} == set(methods)
    assert all(query.get("model") == [other_model] for query in queries), queries
    assert page.locator(".panel[data-state=done]").count() == len(methods)
    assert session.console_errors == []


def test_the_compare_view_shows_both_models_labels_maps_and_their_agreement(
    open_page, live_service, recognised_face, served, artifacts
):
    session = open_page(viewport={"width": 1366, "height": 900})
    page = session.page
    enter_api_key(page, live_service.api_key)
    predictions = requests_to(page, "/predict")
    queries = explanation_queries(page)
    names = [model["name"] for model in served["models"]][:2]
    page.set_input_files("#file", str(recognised_face.path))
    page.wait_for_selector("#label[data-label]")
    page.wait_for_function(SETTLED)  # the first tab's panels: their requests are not counted

    page.click("#tab-compare")
    page.wait_for_selector(f"#compare-method option[value={METHOD}]", state="attached")
    page.select_option("#compare-method", METHOD)
    ticked = page.locator("#compare-form input[name=models]:checked").evaluate_all(
        "bs => bs.map(b => b.value)"
    )
    assert ticked == names
    predictions.clear()
    queries.clear()
    page.click("#compare-form button[type=submit]")
    page.wait_for_function(COMPARED)

    assert page.is_visible("#compare") and not page.is_visible("#result")
    columns = page.eval_on_selector_all("#compare-columns .compare-column", COLUMNS)
    size = list(Image.open(recognised_face.path).size)
    assert columns == [
        {
            "model": name,
            "state": "done",
            "label": recognised_face.class_id,
            "bars": 3,
            "method": METHOD,
            "map": size,
        }
        for name in names
    ]
    # each column asked its own model: its prediction and its map
    assert sorted(query["model"][0] for query in predictions) == sorted(names)
    asked = [query for query in queries if query["path"] == f"/explain/{METHOD}"]
    assert sorted(query["model"][0] for query in asked if query["format"] == ["png"]) == sorted(
        names
    )
    # the same label from both: no disagreement marked
    assert page.get_attribute("#compare-verdict", "data-agree") == "true"
    assert page.locator(".compare-column .disagrees:visible").count() == 0
    # one pair, its rank correlation in [-1, 1], and the caption that says what it means
    pairs = page.eval_on_selector_all("#compare-agreement .pair", PAIRS)
    assert len(pairs) == 1, pairs
    models, rho, text = pairs[0]
    assert models == " ".join(names)
    assert rho != "" and -1 <= float(rho) <= 1 and not math.isnan(float(rho))
    # a copy of the same network draws the same map: its pixels in the same order
    assert float(rho) == pytest.approx(1, abs=1e-3)
    assert f"ρ = {float(rho):.2f}" in text
    assert "rank correlation" in page.locator("#compare-agreement").inner_text()
    page.screenshot(path=artifacts / "page-compare.png", full_page=True)
    assert session.console_errors == []


def test_the_compare_view_marks_models_that_disagree_on_the_label(
    open_page, live_service, recognised_face, served, other_model
):
    """A model that names another class gets the disagreement marker (the service's real answer
    for the photo with its label changed, so the marking is checked whatever the models say)."""
    page = open_page(viewport={"width": 1366, "height": 900}).page
    enter_api_key(page, live_service.api_key)
    prediction = recognised_face.prediction
    runner_up = prediction["probabilities"][1]
    changed = {**prediction, "label": runner_up["id"], "name": runner_up["name"]}
    changed["model"] = {**prediction["model"], "name": other_model}
    page.route(
        lambda url: (
            urlsplit(url).path == "/predict"
            and parse_qs(urlsplit(url).query).get("model") == [other_model]
        ),
        lambda route: route.fulfill(json=changed),
    )

    page.click("#tab-compare")
    page.set_input_files("#compare-file", str(recognised_face.path))
    page.wait_for_function(COMPARED)

    verdict = page.locator("#compare-verdict")
    assert verdict.get_attribute("data-agree") == "false"
    assert f"{other_model} says {runner_up['name']}" in verdict.inner_text()
    marked = page.eval_on_selector_all(
        ".compare-column",
        "cs => cs.map(c => [c.dataset.model, c.querySelector('.disagrees').innerText])",
    )
    assert dict(marked)[other_model] in ("Disagrees with the others", "The models disagree")
    pair = page.locator("#compare-agreement .pair").inner_text()
    assert "different labels" in pair
