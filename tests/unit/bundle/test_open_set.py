"""The "none of the classes" score on the real bundle: its parts on real embeddings, the threshold
for a stated false rejection rate, the operator's setting, and the gallery's sha256 check."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
from PIL import Image

from service.__main__ import main
from service.bundle.checks import verify_files
from service.bundle.format import BundleError, read_meta
from service.bundle.open_set import (
    MAX_SOFTMAX,
    NEAREST_FACE,
    component_scores,
    open_set_rule,
    threshold_for_operating_point,
    threshold_for_rejection_rate,
)
from service.bundle.preprocess import Preprocessor
from service.faces.aligned import whole_image
from service.inference.engine import create_session
from service.settings import Settings

HELD_OUT_STRANGER = "miley_cyrus"  # held out of the bundle's calibration (meta.json open_set)


@pytest.fixture(scope="module")
def outputs(default_bundle, meta, data_root):
    """ONNX (logits, embeddings) of 6 test-split faces of one class and 6 of a held-out stranger."""
    session = create_session(default_bundle / "model.onnx", "cpu", threads=2)
    preprocess = Preprocessor(meta.input)
    split = json.loads((default_bundle / "split.json").read_text())
    known = [data_root / "celebs8" / rel for rel, label in split["splits"]["test"] if label == 7]
    strangers = sorted((data_root / "others" / HELD_OUT_STRANGER).glob("*.png"))

    def run(paths):
        crops = [whole_image(Image.open(p).convert("RGB"), meta.input.framing) for p in paths[:6]]
        x = np.stack([preprocess(crop.crop) for crop in crops])
        return session.run(["logits", "embedding"], {"input": x})

    assert meta.open_set is not None
    assert HELD_OUT_STRANGER in meta.open_set.model_dump()["held_out"]["unknown_identities"]
    return run(known), run(strangers)


def test_the_bundle_ships_the_fused_score_with_its_gallery(meta, gallery):
    spec = meta.open_set
    assert spec is not None and spec.score == "fused" and spec.fusion is not None
    assert spec.fusion.components == [MAX_SOFTMAX, NEAREST_FACE]
    assert spec.gallery in meta.files and gallery is not None
    assert gallery.shape == (sum(meta.training["data"]["counts"]["train"].values()), 128)
    np.testing.assert_allclose(np.linalg.norm(gallery, axis=1), 1, atol=1e-5)
    assert spec.target_false_rejection_rate == 0.05
    assert spec.calibration_scores and spec.calibration_unknown_scores
    assert spec.threshold == pytest.approx(
        threshold_for_operating_point(
            spec.calibration_scores, spec.calibration_unknown_scores, 0.05
        ),
        abs=1e-6,
    )
    assert spec.threshold <= threshold_for_rejection_rate(spec.calibration_scores, 0.05)


@pytest.mark.parametrize("part", [MAX_SOFTMAX, NEAREST_FACE])
def test_a_stranger_scores_lower_than_the_class_own_faces(outputs, gallery, part):
    (known_logits, known_emb), (stranger_logits, stranger_emb) = outputs
    known = component_scores([part], known_logits, known_emb, gallery)[:, 0]
    stranger = component_scores([part], stranger_logits, stranger_emb, gallery)[:, 0]

    assert np.median(stranger) < np.median(known)


def test_the_fused_score_rejects_the_stranger_and_accepts_the_class(meta, gallery, outputs):
    rule = open_set_rule(meta, gallery, None)
    assert rule is not None and rule.threshold_source == "bundle"
    (known_logits, known_emb), (stranger_logits, stranger_emb) = outputs
    known = [rule(logit, emb) for logit, emb in zip(known_logits, known_emb, strict=True)]
    stranger = [rule(logit, emb) for logit, emb in zip(stranger_logits, stranger_emb, strict=True)]

    assert all(0 <= s <= 1 for s in known + stranger)
    assert sum(s >= rule.threshold for s in known) >= 5
    assert sum(s >= rule.threshold for s in stranger) <= 1
    assert max(stranger) < min(known)


def test_threshold_for_a_target_rate_rejects_at_most_that_share():
    scores = np.arange(1, 101) / 100  # 0.01 .. 1.00

    assert threshold_for_rejection_rate(scores, 0.05) == pytest.approx(0.06)
    assert (scores < threshold_for_rejection_rate(scores, 0.05)).mean() == pytest.approx(0.05)
    assert threshold_for_rejection_rate(scores, 0.0) == pytest.approx(0.01)  # rejects none
    assert threshold_for_rejection_rate(scores[::-1], 0.123) == pytest.approx(0.13)
    for bad in (-0.01, 1.0, 1.5):
        with pytest.raises(ValueError, match=r"\[0, 1\)"):
            threshold_for_rejection_rate(scores, bad)


def test_the_operating_point_spends_the_target_only_where_strangers_make_it_pay():
    known = np.arange(1, 101) / 100  # 0.01 .. 1.00; the 5 % target allows up to 0.06
    # strangers all below 0.03: rejecting 0.01 and 0.02 already turns every one away
    assert threshold_for_operating_point(known, [0.005, 0.015, 0.025], 0.05) == pytest.approx(0.03)
    # strangers all above what the target allows: no threshold within it turns one away, so
    # none rejects a known face
    assert threshold_for_operating_point(known, [0.5, 0.7, 0.9], 0.05) == pytest.approx(0.01)
    assert threshold_for_operating_point(known, None, 0.05) == pytest.approx(0.06)
    assert threshold_for_operating_point(known, [], 0.0) == pytest.approx(0.01)
    # a stranger at 0.04 among them: 0.05 turns it away at the cost of 4 % rejections (0.04),
    # 0.03 lets it in (one third) to save two of them (0.02 + 0.33): 0.05 wins
    assert threshold_for_operating_point(known, [0.005, 0.015, 0.04], 0.05) == pytest.approx(0.05)
    with pytest.raises(ValueError, match=r"\[0, 1\)"):
        threshold_for_operating_point(known, [0.1], 1.0)


def test_the_operator_setting_moves_the_threshold_without_retraining(meta, gallery):
    spec = meta.open_set
    assert spec is not None and spec.calibration_scores
    calibration = np.asarray(spec.calibration_scores)
    for target in (0.01, 0.05, 0.2):
        rule = open_set_rule(meta, gallery, target)
        assert rule is not None
        assert rule.threshold_source == "setting" and rule.target_false_rejection_rate == target
        assert (calibration < rule.threshold).mean() <= target
        assert rule.threshold == threshold_for_operating_point(
            calibration, spec.calibration_unknown_scores, target
        )
    lower, higher = (open_set_rule(meta, gallery, t) for t in (0.0, 0.2))
    assert lower is not None and higher is not None and lower.threshold < higher.threshold


def test_a_target_rate_outside_0_1_stops_start_up_with_a_clear_message(capsys):
    for bad in ("1.5", "-0.1", "1"):
        with pytest.raises(SystemExit) as stopped:
            main(["--open-set-target-frr", bad])
        assert stopped.value.code == 2
        error = capsys.readouterr().err
        assert "invalid settings: open_set_target_frr" in error, error
    assert Settings(_env_file=None, open_set_target_frr=0.1).open_set_target_frr == 0.1


def test_a_bundle_without_calibration_scores_refuses_the_setting(meta, gallery):
    spec = meta.open_set
    assert spec is not None
    old = meta.model_copy(update={"open_set": spec.model_copy(update={"calibration_scores": None})})

    with pytest.raises(BundleError, match="stores no calibration_scores"):
        open_set_rule(old, gallery, 0.1)


def test_a_tampered_gallery_fails_the_sha256_check(default_bundle, meta, tmp_path):
    copy = tmp_path / "bundle"
    copy.mkdir()
    for name in ("model.onnx", "model.int8.onnx", "model.pt2", "one_pass.onnx"):
        (copy / name).symlink_to(default_bundle / name)
    for name in ("meta.json", "split.json"):
        shutil.copy(default_bundle / name, copy / name)
    shutil.copytree(default_bundle / "open_set", copy / "open_set")
    meta_json = json.loads((copy / "meta.json").read_text())
    meta_json["files"] = {
        n: i for n, i in meta_json["files"].items() if "/" not in n or n.startswith("open_set/")
    }
    (copy / "meta.json").write_text(json.dumps(meta_json))
    verify_files(copy, read_meta(copy))  # intact: passes

    tampered = np.load(copy / "open_set" / "gallery.npy")
    tampered[0] = -tampered[0]
    np.save(copy / "open_set" / "gallery.npy", tampered)

    with pytest.raises(BundleError, match=r"open_set/gallery\.npy has sha256"):
        verify_files(copy, read_meta(copy))
    del meta_json["files"]["open_set/gallery.npy"]
    (copy / "meta.json").write_text(json.dumps(meta_json))
    with pytest.raises(BundleError, match="does not list the open-set gallery"):
        read_meta(copy)
