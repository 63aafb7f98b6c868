"""Explanations are bounded: beyond the queue they get 503 with Retry-After; /predict stays fast."""

from __future__ import annotations

import threading
import time

from fastapi.testclient import TestClient

from service.app import create_app
from service.inference.engine import Engine

from .conftest import API_KEY


def test_full_explanation_queue_is_503_and_predict_stays_fast(
    make_settings, face_bytes, monkeypatch
):
    # The slow explanation's forward passes wait, on its worker thread, until the test has made
    # its checks: it is still running then, however fast the CPU (/predict does not go this way).
    release = threading.Event()
    run_on_inference_thread = Engine.run_on_inference_thread

    def held(engine, *args, **kwargs):
        assert release.wait(120), "the test never released the explanation"
        return run_on_inference_thread(engine, *args, **kwargs)

    monkeypatch.setattr(Engine, "run_on_inference_thread", held)
    app = create_app(make_settings(max_explanations=1, explanation_queue=0))
    files = lambda: {"file": ("face.png", face_bytes, "image/png")}  # noqa: E731
    with TestClient(app, headers={"X-API-Key": API_KEY}) as client:
        slow: dict = {}

        def run_slow() -> None:
            started = time.perf_counter()
            slow["response"] = client.post("/lime?num_samples=2000&seed=11", files=files())
            slow["seconds"] = time.perf_counter() - started

        worker = threading.Thread(target=run_slow)
        worker.start()
        deadline = time.time() + 10
        while app.state.service.explanations.admitted.active == 0 and time.time() < deadline:
            time.sleep(0.01)
        assert app.state.service.explanations.admitted.active == 1

        refused = client.post("/occlusion", files=files())
        started = time.perf_counter()
        predicted = client.post("/predict", files=files())
        predict_seconds = time.perf_counter() - started
        busy_meanwhile = worker.is_alive()
        release.set()
        worker.join(timeout=120)

        assert refused.status_code == 503
        assert refused.json()["error"]["code"] == "overloaded"
        assert refused.headers["Retry-After"] == "2"
        assert predicted.status_code == 200
        assert busy_meanwhile and predict_seconds < slow["seconds"]
        assert slow["response"].status_code == 200
        assert client.post("/saliency", files=files()).status_code == 200  # the gate reopened
