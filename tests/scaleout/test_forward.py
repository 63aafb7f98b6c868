"""A request carried to a replica runs through the service's own app (``forward.run_asgi``):
the same answer as the app gives over HTTP, and a caller that stops waiting stops the work.

No Ray here: ``run_asgi`` is what a replica runs, on the real app with the real bundle.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Awaitable, Callable
from pathlib import Path

import pytest
from prometheus_client.parser import text_string_to_metric_families

from service.app import create_app
from service.scaleout.forward import ForwardedRequest, run_asgi
from service.settings import Settings
from tests.image_bytes import face_png
from tests.pacing import HeldPasses
from tests.scaleout.multipart import multipart_file

MAX_EXPLANATIONS = 2


@pytest.fixture(scope="module")
def face(celebs_root: Path) -> bytes:
    return face_png(celebs_root, "tom_hanks")


def _with_app(scenario: Callable[..., Awaitable[None]], bundle: Path) -> None:
    """Run ``scenario(app)`` inside the app's lifespan (the bundle loaded, as in a replica)."""
    settings = Settings(_env_file=None, model=bundle, threads=2, access_log=False)

    async def main() -> None:
        app = create_app(settings)
        async with app.router.lifespan_context(app):
            assert app.state.service.phase == "ready", app.state.service.reason
            await scenario(app)

    asyncio.run(main())


def _upload(path: str, face: bytes, query: bytes = b"detect=false") -> ForwardedRequest:
    body, content_type = multipart_file(face)
    return ForwardedRequest(
        method="POST",
        path=path,
        query_string=query,
        headers=[(b"content-type", content_type.encode()), (b"host", b"replica")],
        body=body,
        client=("127.0.0.1", 50000),
    )


def _sample(app, name: str, **labels: str) -> float:
    """The sum of the samples ``name`` whose labels include ``labels``."""
    text = app.state.service.metrics.render().decode()
    return sum(
        sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
        if sample.name == name and all(sample.labels.get(k) == v for k, v in labels.items())
    )


def test_answers_are_the_apps(default_bundle: Path, face: bytes):
    async def scenario(app) -> None:
        predicted = await run_asgi(app, _upload("/predict", face))
        assert predicted.status == 200
        assert predicted.header("content-type") == "application/json"
        assert json.loads(predicted.body)["label"] == "tom_hanks"
        assert predicted.header("x-content-type-options") == "nosniff"

        unknown = await run_asgi(app, _upload("/explain/no-such-method", face))
        assert unknown.status == 404
        assert json.loads(unknown.body)["error"]["code"] == "unknown_method"

        invalid = await run_asgi(app, _upload("/predict", face, b"face=-1"))
        assert invalid.status == 422
        assert json.loads(invalid.body)["error"]["code"] == "validation_error"

        health = await run_asgi(app, ForwardedRequest(method="GET", path="/healthz"))
        assert (health.status, json.loads(health.body)) == (200, {"status": "ok"})
        assert _sample(app, "celebxai_http_requests_total", endpoint="/predict") == 2

    _with_app(scenario, default_bundle)


def test_a_cancelled_caller_stops_the_work_and_counts_499(
    default_bundle: Path, face: bytes, hold_passes: Callable[[int], HeldPasses]
):
    """LIME with 1000 samples runs 1 + ceil(1000 / 32) = 33 forward passes; cancelled after
    3, at most the pass in flight and one that started meanwhile may still run. The work waits
    before its 4th pass until it is cancelled, so that the caller cancels it after 3 passes
    however fast the CPU would have run the other 30."""
    hold_passes(4)

    async def scenario(app) -> None:
        lime = _upload("/lime", face, b"detect=false&num_samples=1000&seed=0")
        call = asyncio.ensure_future(run_asgi(app, lime))
        while _sample(app, "celebxai_explanation_batches_total") < 3:
            assert not call.done(), "the explanation ended before it could be cancelled"
            await asyncio.sleep(0.02)
        before = _sample(app, "celebxai_explanation_batches_total")
        call.cancel()
        with pytest.raises(asyncio.CancelledError):
            await call  # returns once the app has answered, i.e. the work has stopped
        after = _sample(app, "celebxai_explanation_batches_total")

        assert after - before <= 2
        assert _sample(app, "celebxai_http_requests_total", endpoint="/lime", status="499") == 1
        assert _sample(app, "celebxai_http_requests_total", endpoint="/lime", status="200") == 0
        await asyncio.sleep(0.5)  # nothing runs on in the background
        assert _sample(app, "celebxai_explanation_batches_total") == after

    _with_app(scenario, default_bundle)
