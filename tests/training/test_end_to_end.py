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
    assert set(activations) == {layer["name"] for layer in meta["layers"]}
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


def test_open_set_threshold_and_rates():
    import numpy as np

    from training.open_set import choose_threshold, rates, split_identities

    known = np.array([0.9, 0.95, 0.99, 0.85, 0.6])
    unknown = np.array([0.3, 0.5, 0.7, 0.4])
    threshold = choose_threshold(known, unknown)
    assert 0.7 < threshold <= 0.85
    r = rates(known, unknown, threshold)
    assert r["false_acceptance_rate"] == 0 and r["false_rejection_rate"] == pytest.approx(0.2)
    assert r["auroc"] == pytest.approx(19 / 20)
    cal, held = split_identities(["a", "b", "c", "d", "e"], seed=0)
    assert len(cal) == 2 and len(held) == 3 and not set(cal) & set(held)
    with pytest.raises(ValueError, match="two strangers"):
        split_identities(["a"], seed=0)


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
