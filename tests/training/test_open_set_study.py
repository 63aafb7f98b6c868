"""The open-set study's mirrored candidates and its per-identity breakdown of false acceptances,
on real faces through the committed bundle (a small sample: seconds)."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from service.bundle.open_set import normalise
from training.open_set import acceptances, flip_averaged


def test_acceptances_say_who_is_let_in_and_as_whom():
    scores = np.array([0.9, 0.2, 0.7, 0.8, 0.1, 0.75])
    who = ["ann", "ann", "ann", "bob", "bob", "cid"]
    named = ["x", "y", "x", "z", "x", "y"]
    out = acceptances(scores, who, named, threshold=0.75)
    assert out["ann"] == {"accepted": 1, "of": 3, "as": {"x": 1}, "top_scores": [0.9]}
    assert out["bob"] == {"accepted": 1, "of": 2, "as": {"z": 1}, "top_scores": [0.8]}
    # a score equal to the threshold is accepted, as the service decides (score >= threshold)
    assert out["cid"]["accepted"] == 1
    assert sum(r["accepted"] for r in out.values()) == int((scores >= 0.75).sum())


@pytest.fixture(scope="module")
def real_features(default_bundle, celebs_root, data_root):
    """The bundle's logits and embeddings, plain and mirrored, for a few training, validation and
    test faces and for two strangers' identities (one a side)."""
    from training.data import FaceDataset, scan
    from training.from_bundle import classifier_from_bundle

    model, prep, _ = classifier_from_bundle(default_bundle)
    splits = json.loads((default_bundle / "split.json").read_text())["splits"]
    others = scan(data_root / "others")
    sets = {
        name: FaceDataset(celebs_root, [tuple(s) for s in splits[name][::40]], prep)
        for name in ("train", "val", "test")
    }
    for side, person in (("unknown_calibration", 0), ("unknown_held_out", 1)):
        samples = [s for s in others.samples if s[1] == person][:6]
        sets[side] = FaceDataset(others.root, samples, prep)
    features = {}
    with torch.no_grad():
        for name, d in sets.items():
            x = prep.standardise(d.images)
            logits, emb = model.logits_and_embedding(x)
            logits_m, emb_m = model.logits_and_embedding(torch.flip(x, dims=[3]))
            features[name] = {
                "logits": logits.numpy(),
                "fine_tuned": normalise(emb.numpy()),
                "logits_mirrored": logits_m.numpy(),
                "fine_tuned_mirrored": normalise(emb_m.numpy()),
                # stand-ins: the frozen network's rows are not what these tests check
                "frozen": normalise(emb.numpy()),
                "frozen_dlib_framed": normalise(emb.numpy()),
                "labels": d.labels.numpy(),
            }
    return features


def test_a_face_and_its_mirror_have_one_flip_averaged_embedding(real_features):
    f = real_features["test"]
    one = flip_averaged(f["fine_tuned"], f["fine_tuned_mirrored"])
    other = flip_averaged(f["fine_tuned_mirrored"], f["fine_tuned"])
    np.testing.assert_allclose(one, other, atol=1e-6)
    np.testing.assert_allclose(np.linalg.norm(one, axis=1), 1.0, atol=1e-5)
    # mirroring changes a real face's embedding (else the candidate would add nothing)
    assert (np.sum(f["fine_tuned"] * f["fine_tuned_mirrored"], axis=1) < 0.9999).all()


def test_mirrored_candidates_score_gallery_and_query_alike(real_features):
    from training.open_set_study import (
        LOGIT_BASED,
        MIRRORED,
        candidate_scores,
        evaluate,
        nearest_face_accuracy,
    )

    as_gallery = dict(real_features, val=real_features["train"])
    assert nearest_face_accuracy(as_gallery)["fine_tuned"]["val"] == 1.0
    scores = candidate_scores(as_gallery)
    nearest = scores["cosine to 1-NN training face, fine-tuned" + MIRRORED]
    # a training face queried against the gallery it is in finds itself: the query and the
    # gallery are embedded the same way (both views, averaged)
    np.testing.assert_allclose(nearest["val"], 1.0, atol=1e-5)
    assert (nearest["unknown_held_out"] < 0.999).all()

    scores = candidate_scores(real_features)
    results, best_fusion = evaluate(scores, target_frr=0.05)
    assert "max-softmax" + MIRRORED in LOGIT_BASED
    assert best_fusion.startswith("fusion (logistic)") and best_fusion in scores
    for name, r in results.items():
        assert (scores[name]["val"] >= r["threshold"]).mean() >= 0.95, name
        assert 0 <= r["held_out"]["auroc"] <= 1


def test_the_bundles_framing_gives_the_frozen_network_dlibs_own_view(default_bundle, celebs_root):
    """The frozen network on a training crop framed as the bundle says (``input.framing``, as
    ``fit`` measured dlib's chips in the crops) sees nearly what dlib's own pipeline (landmarks
    -> 150x150 chip with 0.25 padding) gives it, much nearer than on the crop as is."""
    import dlib
    from PIL import Image

    from service.bundle.format import read_meta
    from service.faces.model_files import face_models_file, landmarks_model_path
    from training.backbones import build_backbone
    from training.preprocess import Preprocessing

    frozen, whole = build_backbone("dlib-resnet29", "default")
    frozen.eval()
    framed = Preprocessing.from_meta(read_meta(default_bundle).input.model_dump())
    assert whole.framing is None and framed.framing is not None
    detector = dlib.get_frontal_face_detector()
    predictor = dlib.shape_predictor(str(landmarks_model_path()))
    native = dlib.face_recognition_model_v1(
        str(face_models_file("dlib_face_recognition_resnet_model_v1.dat"))
    )
    files = sorted((celebs_root / "tom_hanks").iterdir())[:12]
    views: dict[str, list] = {"whole": [], "framed": []}
    reference = []
    for path in files:
        image = np.asarray(Image.open(path).convert("RGB"))
        boxes = detector(image, 1)
        if len(boxes) == 0:
            continue
        shape = predictor(image, boxes[0])
        reference.append(np.asarray(native.compute_face_descriptor(image, shape, 0, 0.25)))
        views["whole"].append(whole.load(path))
        views["framed"].append(framed.load(path))
    assert len(reference) >= 6
    agree = {}
    with torch.no_grad():
        for name, crops in views.items():
            x = whole.standardise(torch.from_numpy(np.stack(crops)).permute(0, 3, 1, 2))
            agree[name] = np.sum(normalise(frozen(x).numpy()) * normalise(np.stack(reference)), 1)
    assert agree["framed"].mean() > 0.9 and (agree["framed"] > agree["whole"]).all()
