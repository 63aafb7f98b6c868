"""How much to believe each map, on the page: every panel asks for its map graded, its traffic
light shows the verdict the API gives for the same photo and method, with the figures on hover
and on keyboard focus, "not graded" where the answer has no grade; the method's sanity result
beside its name where the bundle has one. Real headless Chromium, real service."""

from __future__ import annotations

from pathlib import Path
from urllib.parse import parse_qs, urlsplit

import httpx
import pytest

from tests.browser.test_page import SETTLED, enter_api_key, show_explanations

# a live service and headless Chromium (tests/browser/conftest.py)
pytestmark = pytest.mark.browser

LIME = ".panel[data-method=lime]"
LIGHTS = """() => Object.fromEntries([...document.querySelectorAll('.panel')].map((p) => {
  const quality = p.querySelector('.quality');
  return [p.dataset.method, {
    verdict: quality.dataset.verdict,
    word: quality.querySelector('.light .word').innerText,
    colour: getComputedStyle(quality.querySelector('.lamp')).backgroundColor,
    says: quality.querySelector('.says').innerText,
  }];
}))"""

BADGES = """ps => ps.map((p) => {
  const badge = p.querySelector('.sanity');
  if (badge.hidden) return [p.dataset.method, null];
  return [p.dataset.method, badge.querySelector('.word').textContent,
          badge.querySelector('.tip').textContent];
})"""


def api_answer(live_service, photo: Path, method: str, graded: bool, **params: object) -> dict:
    """The service's JSON answer for ``photo`` by ``method`` with ``params``, the others at
    their defaults (where the page's fields start), asked directly."""
    with photo.open("rb") as file:
        response = httpx.post(
            f"{live_service.url}/explain/{method}",
            params={"format": "json", "quality": str(graded).lower(), **params},
            files={"file": file},
            headers={"X-API-Key": live_service.api_key},
            timeout=300,
        )
    response.raise_for_status()
    return response.json()


def shown(ratio: float | None) -> str:
    """A ratio as the light's tip writes it."""
    return "n/a" if ratio is None else f"{ratio:.2f}"


def explanation_queries(page) -> list[dict]:
    """The query of every explanation request the page sends from now on (POST /explain/...,
    POST /jobs/...)."""
    queries: list[dict] = []

    def seen(request) -> None:
        path = urlsplit(request.url).path
        if request.method == "POST" and path.startswith(("/explain/", "/jobs/")):
            queries.append({"path": path, **parse_qs(urlsplit(request.url).query)})

    page.on("request", seen)
    return queries


def test_every_light_shows_the_verdict_the_api_gives_with_its_figures_on_hover_and_focus(
    open_page, live_service, recognised_face, methods, listed
):
    session = open_page(viewport={"width": 1366, "height": 900})
    page = session.page
    enter_api_key(page, live_service.api_key)
    queries = explanation_queries(page)

    show_explanations(page, recognised_face.path, methods)

    # every panel asked for its map graded, whatever the method's default
    assert {query["path"].rsplit("/", 1)[1] for query in queries} == set(methods)
    assert all(query["quality"] == ["true"] for query in queries), queries
    lights = page.evaluate(LIGHTS)
    answers = {m: api_answer(live_service, recognised_face.path, m, True) for m in methods}
    verdicts = {method: answer["quality"]["verdict"] for method, answer in answers.items()}
    assert {method: light["verdict"] for method, light in lights.items()} == verdicts
    assert {method: light["word"] for method, light in lights.items()} == verdicts
    # one colour per verdict, and one sentence per verdict: the light is not the same for all
    colour_of = {light["verdict"]: light["colour"] for light in lights.values()}
    says_of = {light["verdict"]: light["says"] for light in lights.values()}
    assert all(colour_of[light["verdict"]] == light["colour"] for light in lights.values())
    assert all(says_of[light["verdict"]] == light["says"] for light in lights.values())
    assert len(set(colour_of.values())) == len(set(says_of.values())) == len(colour_of)
    rule = httpx.get(f"{live_service.url}/explain", timeout=10).json()["quality_rule"]
    assert page.locator("#quality-rule [data-part=rule]").text_content() == rule

    # the figures: on hover for a panel answered at once, on keyboard focus for a job's
    at_once = next(m["name"] for m in listed if not m["anytime"])
    as_job = next(m["name"] for m in listed if m["anytime"])
    for method, reveal in ((at_once, "hover"), (as_job, "focus")):
        quality = answers[method]["quality"]
        light = page.locator(f".panel[data-method={method}] .quality .light")
        tip = page.locator(f".panel[data-method={method}] .quality .tip")
        assert tip.is_hidden()
        if reveal == "hover":
            light.hover()
        else:
            light.focus()
        tip.wait_for(state="visible")
        deletion = tip.locator("[data-figure=deletion]").inner_text()
        insertion = tip.locator("[data-figure=insertion]").inner_text()
        assert f"ratio {shown(quality['deletion_ratio'])}" in deletion, deletion
        assert f"vs random {quality['random_deletion_auc']:.3f}" in deletion, deletion
        assert f"ratio {shown(quality['insertion_ratio'])}" in insertion, insertion
        for name, value in quality["signals"].items():
            assert tip.locator(f"[data-figure={name}]").inner_text() == f"{value:.2f}"
        assert all(reason in tip.inner_text() for reason in quality["reasons"])
        if reveal == "focus":
            page.keyboard.press("Escape")
            tip.wait_for(state="hidden")
        page.mouse.move(0, 0)
        page.locator("#file").focus()
        tip.wait_for(state="hidden")
    assert session.console_errors == []


def test_a_job_light_is_grey_while_its_map_comes_then_shows_the_verdict(
    open_page, live_service, recognised_face, methods
):
    page = open_page().page
    enter_api_key(page, live_service.api_key)
    show_explanations(page, recognised_face.path, methods)
    panel = page.locator(LIME)
    panel.locator("input[name=num_samples]").fill("1000")
    # a seed no other test asks for: a map already in the service's cache comes at once,
    # with no partial map to watch (the jobs tests ask LIME at 1000 samples, seed 0)
    panel.locator("input[name=seed]").fill("8128")

    panel.locator("button[type=submit]").click()
    page.wait_for_function(
        "p => Number(document.querySelector(p).dataset.partials ?? 0) >= 1", arg=LIME
    )
    light = page.evaluate(LIGHTS)["lime"]
    assert panel.get_attribute("data-state") == "busy"
    assert (light["verdict"], light["word"]) == ("pending", "not graded")
    page.wait_for_function(SETTLED)

    answer = api_answer(
        live_service, recognised_face.path, "lime", True, num_samples=1000, seed=8128
    )
    assert page.evaluate(LIGHTS)["lime"]["verdict"] == answer["quality"]["verdict"]
    assert page.evaluate(LIGHTS)["lime"]["colour"] != light["colour"]


def test_a_map_asked_without_grading_says_not_graded(
    open_page, live_service, recognised_face, methods, listed
):
    page = open_page().page
    enter_api_key(page, live_service.api_key)
    show_explanations(page, recognised_face.path, methods)
    graded = page.evaluate(LIGHTS)
    at_once = next(m["name"] for m in listed if not m["anytime"])
    panel = page.locator(f".panel[data-method={at_once}]")
    assert panel.locator(".quality").get_attribute("data-verdict") == graded[at_once]["verdict"]

    panel.locator("input[name=quality]").uncheck()
    with page.expect_request(lambda r: f"/explain/{at_once}?" in r.url) as request:
        panel.locator("button[type=submit]").click()
    assert parse_qs(urlsplit(request.value.url).query)["quality"] == ["false"]
    page.wait_for_function(SETTLED)

    assert api_answer(live_service, recognised_face.path, at_once, False)["quality"] is None
    light = page.evaluate(LIGHTS)[at_once]
    assert light["verdict"] == "ungraded"
    assert light["word"] == "not graded"
    assert "not graded" in light["says"]
    # grey: none of the verdicts' colours
    assert light["colour"] not in {other["colour"] for other in graded.values()}
    assert panel.get_attribute("data-state") == "done"
    assert panel.locator("img.heat").is_visible()


def test_the_sanity_badge_shows_where_the_bundle_has_a_result(
    open_page, live_service, recognised_face, methods, listed
):
    page = open_page().page
    enter_api_key(page, live_service.api_key)
    page.wait_for_selector(".panel", state="attached")

    # as the service lists it: a badge, with the note, exactly where a method has a result
    badges = page.eval_on_selector_all(".panel", BADGES)
    assert badges == [
        [m["name"], None]
        if m["sanity"] is None
        else [m["name"], "sanity ✓" if m["sanity"]["passed"] else "sanity ✗", m["sanity"]["note"]]
        for m in listed
    ]

    # each way and none, the note on hover and on focus, whatever the bundle holds
    notes = {
        listed[0]["name"]: {"passed": True, "note": "passes the sanity check: its maps change"},
        listed[1]["name"]: {"passed": False, "note": "fails the sanity check: its maps stay"},
    }
    answer = httpx.get(f"{live_service.url}/explain", timeout=10).json()
    for method in answer["methods"]:
        method["sanity"] = notes.get(method["name"])
    page.route("**/explain", lambda route: route.fulfill(json=answer))
    page.reload()
    show_explanations(page, recognised_face.path, methods)

    assert page.eval_on_selector_all(".panel", BADGES) == [
        [listed[0]["name"], "sanity ✓", notes[listed[0]["name"]]["note"]],
        [listed[1]["name"], "sanity ✗", notes[listed[1]["name"]]["note"]],
        *[[m["name"], None] for m in listed[2:]],
    ]
    for method, reveal in ((listed[0]["name"], "hover"), (listed[1]["name"], "focus")):
        badge = page.locator(f".panel[data-method={method}] .sanity")
        tip = badge.locator(".tip")
        assert tip.is_hidden()
        if reveal == "hover":
            badge.hover()
        else:
            badge.focus()
        tip.wait_for(state="visible")
        assert tip.inner_text() == notes[method]["note"]
        page.mouse.move(0, 0)
        page.locator("#file").focus()
        tip.wait_for(state="hidden")
