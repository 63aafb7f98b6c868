"""The face detector's worst cases against ``python -m service`` as users start it.

A blank 20000x16 PNG (1 KB) once made the detector's retry search a 216-megapixel image for 78 s
and 7 GB; a 12-megapixel photo without a face runs both passes on the largest views allowed. The
cost is checked through the service's own counter, ``celebxai_face_search_pixels`` (pixels
searched per request, every pass), not by a clock; memory through the server's RSS. The worst
cases run on a service with the face search cache off (``--face-search-cache 0``), so that every
upload is searched; with it on (the default), two identical uploads at once are searched once.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator

import httpx
import pytest

from service.faces.finder import SEARCH_MAX_PIXELS
from tests.load.harness import stop_server

from .conftest import ServiceProcess, launch
from .detector_uploads import FACE, WORST_CASES
from .scrape import metric_samples

# a service process of its own without the face search cache, and the directory's shared one
# (tests/hostile/conftest.py), both started as users start them
pytestmark = pytest.mark.slow

# Two passes of at most SEARCH_MAX_PIXELS each; a bucket bound of the histogram.
SEARCH_BOUND = 2 * SEARCH_MAX_PIXELS
# A strip 16 pixels high is searched as a 1 or 2 pixel high view.
STRIP_BOUND = 10_000
# What the server may keep after the three uploads (the photo alone decodes to 36 MB of RGB).
RSS_GROWTH_LIMIT_MIB = 128


def _search_pixels(client: httpx.Client) -> dict[str, float]:
    """The ``celebxai_face_search_pixels`` histogram now: ``count``, ``sum`` and, for the
    bucket of ``SEARCH_BOUND``, ``within_bound`` (observations at most that)."""
    values = {}
    for sample in metric_samples(str(client.base_url).rstrip("/"), "celebxai_face_search_pixels"):
        if sample.name.endswith("_count"):
            values["count"] = sample.value
        elif sample.name.endswith("_sum"):
            values["sum"] = sample.value
        elif sample.name.endswith("_bucket") and float(sample.labels["le"]) == SEARCH_BOUND:
            values["within_bound"] = sample.value
    assert set(values) == {"count", "sum", "within_bound"}, "no face search histogram in /metrics"
    return values


def _post(client: httpx.Client, data: bytes, content_type: str) -> httpx.Response:
    return client.post("/predict", files={"file": ("upload", data, content_type)})


def _lookups(client: httpx.Client) -> dict[str, float]:
    """The face search cache's lookups by result (``hit``, ``shared``, ``miss``) so far."""
    url = str(client.base_url).rstrip("/")
    return {
        sample.labels["result"]: sample.value
        for sample in metric_samples(url, "celebxai_face_search_cache_lookups")
        if sample.name.endswith("_total")
    }


@pytest.fixture(scope="module")
def uploads() -> dict[str, tuple[bytes, str]]:
    return {name: (build(), content_type) for name, (build, content_type) in WORST_CASES.items()}


@pytest.fixture(scope="module")
def uncached_service(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServiceProcess]:
    """The README's ``python -m service``, with ``--face-search-cache 0``: every upload is
    searched, however often it is sent."""
    service = launch(tmp_path_factory.mktemp("uncached"), ["--face-search-cache", "0"])
    try:
        yield service
    finally:
        stop_server(service.process)


def test_each_worst_case_answers_and_searches_a_bounded_area(uncached_service, uploads):
    service_process = uncached_service
    rss_before = service_process.rss_mib()
    with httpx.Client(base_url=service_process.url, timeout=120) as client:
        for name, (data, content_type) in uploads.items():
            before = _search_pixels(client)
            response = _post(client, data, content_type)
            after = _search_pixels(client)

            assert response.status_code in (200, 422), (name, response.text)
            if response.status_code == 422:
                assert response.json()["error"]["code"] == "no_face", name
            searched = after["sum"] - before["sum"]
            assert after["count"] - before["count"] == 1, name
            assert after["within_bound"] - before["within_bound"] == 1, (name, searched)
            if name.startswith("blank-"):
                assert searched <= STRIP_BOUND, (name, searched)
    growth = service_process.rss_mib() - rss_before
    assert growth < RSS_GROWTH_LIMIT_MIB, f"RSS grew by {growth:.0f} MiB"


def test_predict_answers_while_worst_cases_are_searched(uncached_service, uploads, celebs_root):
    """Two faceless 12-megapixel photos and two blank strips at once, then a face: everything
    is answered, the face correctly, and every search stays within the bound."""
    service_process = uncached_service
    with httpx.Client(base_url=service_process.url, timeout=120) as client:
        before = _search_pixels(client)
        answers: list[int] = []

        def send(data: bytes, content_type: str) -> None:
            with httpx.Client(base_url=service_process.url, timeout=120) as own:
                answers.append(_post(own, data, content_type).status_code)

        heavy = [
            uploads["photo-12mp"],
            uploads["photo-12mp"],
            uploads["blank-20000x16"],
            uploads["blank-8000x16"],
        ]
        senders = [threading.Thread(target=send, args=upload) for upload in heavy]
        for sender in senders:
            sender.start()
        face = _post(client, (celebs_root / FACE).read_bytes(), "image/png")
        for sender in senders:
            sender.join()
        after = _search_pixels(client)

    assert face.status_code == 200, face.text
    assert len(answers) == 4 and set(answers) <= {200, 422}, answers
    searched = after["count"] - before["count"]
    assert searched == 5
    assert after["within_bound"] - before["within_bound"] == searched


def test_identical_uploads_at_once_are_searched_once(service_process, uploads):
    """Three faceless 12-megapixel photos at once, then again: one search, within the bound;
    every other request had its faces (none) from that search, waiting for it or cached."""
    data, content_type = uploads["photo-12mp"]
    with httpx.Client(base_url=service_process.url, timeout=120) as client:
        before, lookups_before = _search_pixels(client), _lookups(client)
        answers: list[int] = []

        def send() -> None:
            with httpx.Client(base_url=service_process.url, timeout=120) as own:
                answers.append(_post(own, data, content_type).status_code)

        senders = [threading.Thread(target=send) for _ in range(3)]
        for sender in senders:
            sender.start()
        for sender in senders:
            sender.join()
        answers.append(_post(client, data, content_type).status_code)
        after, lookups = _search_pixels(client), _lookups(client)

    assert answers == [422] * 4
    assert lookups["miss"] - lookups_before["miss"] == 1
    reused = sum(lookups[k] - lookups_before[k] for k in ("hit", "shared"))
    assert reused == 3 and lookups["hit"] - lookups_before["hit"] >= 1
    assert after["count"] - before["count"] == 4
    assert after["within_bound"] - before["within_bound"] == 4
    assert 0 < after["sum"] - before["sum"] <= SEARCH_BOUND
