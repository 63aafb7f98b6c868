"""``fit`` exports the better of the fine-tuned model and the frozen-feature baseline: the rule,
the baseline as a bundle (a real small fit), and the probe folded into the classifier's head."""

from __future__ import annotations

import json
import logging

import numpy as np
import pytest
import torch

from service.inference.model import load_model
from service.settings import Settings
from training.__main__ import main
from training.backbones import build_backbone
from training.baseline import HEAD, linear_probe, probe_classifier
from training.data import FaceDataset, scan
from training.selection import choose


def test_the_better_validation_accuracy_wins_then_the_lower_loss():
    tuned, base = {"accuracy": 0.956, "loss": 0.2}, {"accuracy": 0.978, "loss": 0.3}
    picked = choose({"fine-tuned": tuned, "baseline": base})
    assert picked["exported"] == "baseline"
    assert picked["reason"].startswith("higher validation accuracy (0.9780 vs 0.9560")

    tie = choose(
        {"fine-tuned": {"accuracy": 0.9, "loss": 0.2}, "baseline": base | {"accuracy": 0.9}}
    )
    assert tie["exported"] == "fine-tuned" and "cross-entropy" in tie["reason"]

    forced = choose({"fine-tuned": tuned, "baseline": base}, "fine-tuned")
    assert (
        forced["exported"] == "fine-tuned" and forced["reason"] == "forced by --export fine-tuned"
    )
    assert choose({"fine-tuned": tuned})["exported"] == "fine-tuned"
    with pytest.raises(ValueError, match="not trained"):
        choose({"fine-tuned": tuned}, "baseline")


def test_the_folded_probe_gives_the_logistic_regressions_logits(celebs_root):
    backbone, prep = build_backbone("dlib-resnet29", "default")
    tree = scan(celebs_root)
    samples = [s for s in tree.samples if s[1] < 3]
    samples = [s for c in range(3) for s in [x for x in samples if x[1] == c][:6]]
    data = FaceDataset(celebs_root, samples, prep)
    loader = torch.utils.data.DataLoader(data, batch_size=32)
    _, probe = linear_probe(backbone, {"train": loader}, prep.standardise, torch.device("cpu"))

    model = probe_classifier(backbone, probe, dropout=0.3)
    x = prep.standardise(data.images)
    with torch.no_grad():
        logits, embedding = model.logits_and_embedding(x)

    np.testing.assert_allclose(
        logits.numpy(), probe.decision_function(embedding.numpy()), rtol=1e-4, atol=1e-4
    )


@pytest.mark.training  # fits a tiny model and exports it
def test_fit_exports_the_baseline_when_asked_and_it_serves(celebs_root, tmp_path, caplog):
    out = tmp_path / "bundle"
    caplog.set_level(logging.INFO, logger="training")
    code = main(
        [
            "fit",
            "--data",
            str(celebs_root),
            "--out",
            str(out),
            "--run-dir",
            str(tmp_path / "run"),
            "--limit-per-class",
            "6",
            "--epochs",
            "1,1,1",
            "--batch-size",
            "16",
            "--threads",
            "2",
            "--others",
            "none",
            "--no-insight",
            "--export",
            "baseline",
        ]
    )
    assert code == 0
    assert "exporting the baseline model: forced by --export baseline" in caplog.text
    meta = json.loads((out / "meta.json").read_text())
    assert meta["selection"]["exported"] == "baseline"
    assert meta["architecture"]["head"] == HEAD
    assert meta["metrics"]["val"]["accuracy"] == pytest.approx(
        meta["metrics"]["baseline_linear_probe"]["val"]["accuracy"]
    )
    model = load_model(Settings(_env_file=None, model=out, threads=2))  # every load-time check
    x = torch.from_numpy(np.stack([model.preprocess(img) for img in _two_faces(celebs_root)]))
    x.requires_grad_(True)
    logits, _ = model.twin(x)
    (grad,) = torch.autograd.grad(logits[:, 0].sum(), x)
    assert grad.abs().sum() > 0  # explanations can take gradients through the baseline


def _two_faces(celebs_root):
    from PIL import Image

    return [
        Image.open(sorted((celebs_root / c).glob("*.png"))[0]).convert("RGB")
        for c in ("tom_hanks", "halle_berry")
    ]
