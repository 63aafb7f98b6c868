"""A tiny real run: fit -> export -> reload -> predict, and the export's parity guard."""

from __future__ import annotations

import hashlib
import json

import numpy as np
import onnx
import pytest
import torch
from onnx import numpy_helper

from training.__main__ import main
from training.export import ParityError, check_parity, onnx_logits
from training.preprocess import Preprocessing

# fits, exports and quantizes a tiny model
pytestmark = pytest.mark.training


def _add_to_last_initializer(source, target, delta: float) -> None:
    """Write ``source`` ONNX to ``target`` with ``delta`` added to its last weight (a head one)."""
    graph = onnx.load(str(source))
    last = graph.graph.initializer[-1]
    last.CopyFrom(numpy_helper.from_array(numpy_helper.to_array(last) + delta, last.name))
    onnx.save(graph, str(target))


@pytest.fixture(scope="module")
def tiny_bundle(celebs_root, data_root, tmp_path_factory):
    out = tmp_path_factory.mktemp("bundle") / "tiny"
    run_dir = tmp_path_factory.mktemp("run")
    code = main(
        [
            "fit",
            "--data",
            str(celebs_root),
            "--out",
            str(out),
            "--run-dir",
            str(run_dir),
            "--limit-per-class",
            "7",
            "--epochs",
            "2,1,1",
            "--batch-size",
            "16",
            "--threads",
            "2",
            "--others",
            str(data_root / "others"),
        ]
    )
    assert code == 0
    return out, run_dir


def test_bundle_has_the_contracted_files_and_hashes(tiny_bundle):
    out, run_dir = tiny_bundle
    meta = json.loads((out / "meta.json").read_text())
    assert {
        "model.onnx",
        "model.pt2",
        "split.json",
        "report/curves.png",
        "report/confusion_test.png",
    } <= set(meta["files"])
    for name, entry in meta["files"].items():
        assert hashlib.sha256((out / name).read_bytes()).hexdigest() == entry["sha256"]
    assert [c["id"] for c in meta["classes"]][:2] == ["gwyneth_paltrow", "halle_berry"]
    assert meta["classes"][-1]["name"] == "Tom Hanks"
    assert meta["input"]["height"] == 150 and meta["input"]["std"] == [256.0, 256.0, 256.0]
    assert meta["parity"]["max_abs_diff"] <= 1e-4 and meta["parity"]["argmax_equal"]
    assert meta["gradcam_layer"] in [layer["name"] for layer in meta["layers"]]
    assert meta["training"]["wall_time_s"] > 0
    assert len(meta["face_alignment"]["points"]) == 5 and meta["face_alignment"]["width"] == 112
    # the dlib backbone is trained on crops framed as dlib's chips (--framing auto), measured on
    # the training crops: lower and a little wider than the crops; the landmark template the
    # service aligns photos to is expressed in that box
    left, top, right, bottom = meta["input"]["framing"]
    assert 0 <= left < 0.15 and 0.1 < top < 0.3 and 0.85 < right <= 1 and 1 < bottom < 1.15
    assert meta["face_alignment"]["framing"] == meta["input"]["framing"]
    nose_y = meta["face_alignment"]["points"][4][1]
    assert 0.55 < nose_y < 0.65  # 0.72 of the crop as is, 0.59 of its dlib-chip box
    assert 0 < meta["open_set"]["threshold"] <= 1
    assert not set(meta["open_set"]["calibration"]["unknown_identities"]) & set(
        meta["open_set"]["held_out"]["unknown_identities"]
    )
    assert (
        "baseline_linear_probe" in meta["metrics"] and 0 <= meta["metrics"]["test"]["accuracy"] <= 1
    )
    assert (run_dir / "checkpoint.pt").is_file()
    split = json.loads((out / "split.json").read_text())
    assert {len(split["splits"][s]) for s in ("val", "test")} == {8}
    assert not set(map(tuple, split["splits"]["train"])) & set(map(tuple, split["splits"]["test"]))


def test_reloaded_onnx_and_twin_predict_the_same_on_real_images(tiny_bundle, celebs_root):
    out, _ = tiny_bundle
    meta = json.loads((out / "meta.json").read_text())
    prep = Preprocessing(
        **{k: tuple(v) if isinstance(v, list) else v for k, v in meta["input"].items()}
    )
    files = [sorted((celebs_root / c["id"]).glob("*.png"))[-1] for c in meta["classes"][:4]]
    x = prep.standardise(
        torch.from_numpy(np.stack([prep.load(f) for f in files])).permute(0, 3, 1, 2)
    )
    onnx_out = onnx_logits(out / "model.onnx", x.numpy())
    twin = torch.export.load(str(out / "model.pt2")).module()
    logits, activations = twin(x)
    assert onnx_out.shape == (4, 8)
    assert np.abs(onnx_out - logits.detach().numpy()).max() <= 1e-4
    # every layer meta.json lists, and the embedding the open-set score reads
    assert set(activations) == {layer["name"] for layer in meta["layers"]} | {"embedding"}
    x.requires_grad_(True)
    grad = torch.autograd.grad(twin(x)[0][:, 0].sum(), x)[0]
    assert grad.shape == x.shape and grad.abs().sum() > 0


def test_evaluate_command_reads_the_recorded_split(tiny_bundle, capsys):
    out, _ = tiny_bundle
    assert main(["evaluate", "--bundle", str(out), "--split", "test"]) == 0
    assert "on test (8 images" in capsys.readouterr().out


def test_export_command_rebuilds_the_bundle_from_the_checkpoint(tiny_bundle, tmp_path):
    out, run_dir = tiny_bundle
    assert (
        main(
            [
                "export",
                "--checkpoint",
                str(run_dir / "checkpoint.pt"),
                "--out",
                str(tmp_path / "again"),
                "--others",
                "none",
            ]
        )
        == 0
    )
    a = json.loads((out / "meta.json").read_text())
    b = json.loads((tmp_path / "again" / "meta.json").read_text())
    assert a["metrics"] == b["metrics"] and a["classes"] == b["classes"]


def test_parity_check_fails_on_an_altered_onnx(tiny_bundle, tmp_path):
    out, run_dir = tiny_bundle
    altered = tmp_path / "altered.onnx"
    _add_to_last_initializer(out / "model.onnx", altered, 0.5)

    from training.backbones import build_backbone
    from training.model import FaceClassifier

    ckpt = torch.load(run_dir / "checkpoint.pt", weights_only=False)
    model = FaceClassifier(build_backbone("dlib-resnet29", "none")[0], 8)
    model.load_state_dict(ckpt["state_dict"])
    probe = torch.randn(4, 3, 150, 150)
    assert check_parity(out / "model.onnx", model, probe)["max_abs_diff"] <= 1e-4
    with pytest.raises(ParityError, match="does not reproduce"):
        check_parity(altered, model, probe)


def test_failed_parity_leaves_no_bundle_behind(tiny_bundle, tmp_path, monkeypatch):
    from training import export as export_module

    def broken_export(model, example, path):
        real_onnx_export(model, example, path)
        _add_to_last_initializer(path, path, 0.5)

    real_onnx_export = export_module.export_onnx
    monkeypatch.setattr(export_module, "export_onnx", broken_export)
    _, run_dir = tiny_bundle
    target = tmp_path / "never"
    assert (
        main(
            [
                "export",
                "--checkpoint",
                str(run_dir / "checkpoint.pt"),
                "--out",
                str(target),
                "--others",
                "none",
            ]
        )
        == 2
    )
    assert not target.exists() and list(tmp_path.iterdir()) == []


def test_open_set_rates_at_the_threshold_and_at_stated_points():
    from training.open_set import rates, split_identities

    known = np.array([0.9, 0.95, 0.99, 0.85, 0.6])
    unknown = np.array([0.3, 0.5, 0.7, 0.4])
    r = rates(known, unknown, 0.8)
    assert r["false_acceptance_rate"] == 0 and r["false_rejection_rate"] == pytest.approx(0.2)
    assert r["auroc"] == pytest.approx(19 / 20)
    # 5 % of 5 known faces: none may be rejected -> threshold 0.6 accepts the 0.7 stranger
    assert r["far_at_frr_5"] == pytest.approx(0.25)
    # at most 10 % of 4 strangers accepted: none -> every known face at or below 0.7 rejected
    assert r["frr_at_far_10"] == pytest.approx(0.2)
    cal, held = split_identities(["a", "b", "c", "d", "e"], seed=0)
    assert len(cal) == 2 and len(held) == 3 and not set(cal) & set(held)
    with pytest.raises(ValueError, match="two strangers"):
        split_identities(["a"], seed=0)


def test_bundle_records_the_open_set_operating_point(tiny_bundle):
    out, _ = tiny_bundle
    meta = json.loads((out / "meta.json").read_text())
    block = meta["open_set"]
    assert block["score"] == "fused" and block["target_false_rejection_rate"] == 0.05
    assert block["gallery"] == "open_set/gallery.npy" and block["gallery"] in meta["files"]
    gallery = np.load(out / block["gallery"])
    assert gallery.shape == (
        len(json.loads((out / "split.json").read_text())["splits"]["train"]),
        128,
    )
    scores = np.asarray(block["calibration_scores"])
    assert len(scores) == block["calibration"]["known"] == 8
    assert (scores < block["threshold"]).mean() <= 0.05
    for side in ("calibration", "held_out"):
        assert {"auroc", "far_at_frr_5", "far_at_frr_1", "frr_at_far_10", "frr_at_far_1"} <= set(
            block[side]
        )


def test_fit_records_which_model_it_exported_and_why(tiny_bundle):
    out, run_dir = tiny_bundle
    meta = json.loads((out / "meta.json").read_text())
    selection = meta["selection"]
    val = selection["validation"]
    assert set(val) == {"fine-tuned", "baseline"}
    better = max(val, key=lambda m: (val[m]["accuracy"], -val[m]["loss"]))
    assert selection["exported"] == better
    assert "validation" in selection["reason"]
    assert meta["metrics"]["val"]["accuracy"] == pytest.approx(val[better]["accuracy"])
    report = json.loads((run_dir / "report" / "metrics.json").read_text())
    assert report["selection"] == selection


def test_missing_strangers_folder_fails_before_training(celebs_root, tmp_path, caplog):
    out = tmp_path / "bundle"
    code = main(
        [
            "fit",
            "--data",
            str(celebs_root),
            "--out",
            str(out),
            "--run-dir",
            str(tmp_path / "run"),
            "--others",
            str(tmp_path / "nobody"),
        ]
    )
    assert code == 2
    assert "--others none" in caplog.text
    assert not out.exists() and not (tmp_path / "run").exists()


def test_export_from_a_bundle_keeps_its_weights_and_name(tiny_bundle, celebs_root, tmp_path):
    out, _ = tiny_bundle
    target = tmp_path / "again"
    assert main(["export", "--bundle", str(out), "--out", str(target), "--no-insight"]) == 0
    before = json.loads((out / "meta.json").read_text())
    after = json.loads((target / "meta.json").read_text())
    assert after["name"] == before["name"] == "tiny"
    assert after["metrics"] == before["metrics"] and after["selection"] == before["selection"]
    assert after["open_set"]["threshold"] == pytest.approx(
        before["open_set"]["threshold"], abs=1e-5
    )
    prep = Preprocessing(
        **{k: tuple(v) if isinstance(v, list) else v for k, v in before["input"].items()}
    )
    files = [sorted((celebs_root / c["id"]).glob("*.png"))[-1] for c in before["classes"][:3]]
    x = prep.standardise(
        torch.from_numpy(np.stack([prep.load(f) for f in files])).permute(0, 3, 1, 2)
    ).numpy()
    np.testing.assert_allclose(
        onnx_logits(target / "model.onnx", x), onnx_logits(out / "model.onnx", x), atol=1e-5
    )
