"""``/predict``'s ``open_set`` verdict and ``/model``'s operating point, as users get them:
a stranger's photo (an identity held out of calibration), the operator's target rate, and a
tampered gallery that keeps the service not ready."""

from __future__ import annotations

import json
import shutil

import numpy as np
from fastapi.testclient import TestClient

from service.app import create_app

from .conftest import API_KEY

STRANGER = "others/victoria_beckham"  # held out of the bundle's calibration (meta.json)


def test_strangers_photos_are_mostly_called_none_of_the_classes(
    post_image, data_root, serving_model
):
    spec = serving_model.meta.open_set
    held_out = spec.model_dump()["held_out"]["unknown_identities"]
    assert len(held_out) == 4
    photos = [
        p for who in held_out for p in sorted((data_root / "others" / who).glob("*.png"))[:12]
    ]
    verdicts = [post_image(path.read_bytes()).json()["open_set"] for path in photos]

    # held-out strangers through the photo path: none of 160 accepted (bench_faces.py,
    # docs/faces-and-strangers.md)
    assert sum(not v["known"] for v in verdicts) >= 0.95 * len(photos)
    for v in verdicts:
        assert v["definition"] == "fused" and v["threshold"] == spec.threshold
        assert v["target_false_rejection_rate"] == 0.05 and v["threshold_source"] == "bundle"
        assert (v["score"] >= v["threshold"]) == v["known"]


def test_model_says_which_threshold_and_target_apply(client, serving_model):
    runtime = client.get("/model").json()["runtime"]

    assert runtime["open_set"] == {
        "definition": "fused",
        "threshold": serving_model.meta.open_set.threshold,
        "target_false_rejection_rate": 0.05,
        "threshold_source": "bundle",
    }


def test_the_operator_target_rate_moves_the_threshold(make_settings, data_root):
    # a 0 % target: no known calibration face may be rejected, so the threshold drops to the
    # lowest of their scores
    settings = make_settings(open_set_target_frr=0.0)
    photo = sorted((data_root / STRANGER).glob("*.png"))[0].read_bytes()
    with TestClient(create_app(settings), headers={"X-API-Key": API_KEY}) as client:
        runtime = client.get("/model").json()["runtime"]["open_set"]
        verdict = client.post("/predict", files={"file": ("f.png", photo, "image/png")}).json()
        meta = client.get("/model").json()["meta"]["open_set"]

    calibration = np.asarray(meta["calibration_scores"])
    assert runtime["threshold_source"] == "setting"
    assert runtime["target_false_rejection_rate"] == 0.0
    assert runtime["threshold"] < meta["threshold"]
    assert runtime["threshold"] == calibration.min()
    assert verdict["open_set"]["threshold"] == runtime["threshold"]
    assert verdict["open_set"]["threshold_source"] == "setting"


def test_a_tampered_gallery_keeps_the_service_not_ready(make_settings, default_bundle, tmp_path):
    bundle = tmp_path / "bundle"
    bundle.mkdir()
    for path in default_bundle.iterdir():
        if path.is_file():
            (bundle / path.name).symlink_to(path)
    shutil.copytree(default_bundle / "open_set", bundle / "open_set")
    meta = json.loads((default_bundle / "meta.json").read_text())
    meta["files"] = {
        n: i for n, i in meta["files"].items() if "/" not in n or n.startswith("open_set/")
    }
    (bundle / "meta.json").unlink()
    (bundle / "meta.json").write_text(json.dumps(meta))
    gallery = np.load(bundle / "open_set" / "gallery.npy")
    np.save(bundle / "open_set" / "gallery.npy", gallery[::-1])

    with TestClient(create_app(make_settings(model=bundle, api_key=None))) as client:
        ready = client.get("/readyz")

    assert ready.status_code == 503
    assert "open_set/gallery.npy has sha256" in ready.json()["error"]["message"]
