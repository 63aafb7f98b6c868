"""The one-pass explainer's training pieces on real faces and the real bundle: Shapley-kernel
coalitions, grid masks, the FastSHAP fit (it recovers a game whose Shapley values are known),
the ONNX export read back by the service's load checks, and the faithfulness gate refusing a
map that points the wrong way."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import numpy as np
import pytest
import torch

from service.bundle.format import ONE_PASS_FILE, BundleError, read_meta
from service.bundle.preprocess import Preprocessor
from service.explain.one_pass import efficient
from service.inference.model import load_model
from service.settings import Settings
from tests.one_pass_explainer import small_explainer
from training.bundle_meta import update_meta
from training.from_bundle import classifier_from_bundle
from training.one_pass.command import export_onnx
from training.one_pass.fit import FitConfig, fit_head, fit_heads
from training.one_pass.gates import faithfulness
from training.one_pass.net import Heads, Trunk
from training.one_pass.samples import Samples, cell_masks, kernel_coalitions, split_faces

PLAYERS = 64


def test_coalitions_come_in_complementary_pairs_of_every_size_from_a_seed() -> None:
    drawn = kernel_coalitions(np.random.default_rng(3), 50, 16, PLAYERS)
    assert drawn.shape == (50, 16, PLAYERS)
    np.testing.assert_array_equal(drawn[:, :8] + drawn[:, 8:], 1.0)
    sizes = drawn.sum(-1)
    assert sizes.min() >= 1 and sizes.max() <= PLAYERS - 1
    # the kernel puts most weight on small and large coalitions
    assert np.mean((sizes <= 8) | (sizes >= 56)) > 0.5
    np.testing.assert_array_equal(drawn, kernel_coalitions(np.random.default_rng(3), 50, 16, 64))
    with pytest.raises(ValueError, match="even"):
        kernel_coalitions(np.random.default_rng(0), 1, 3, PLAYERS)


def test_each_pixel_takes_the_value_of_its_grid_cell() -> None:
    one = np.zeros(PLAYERS, dtype=np.float32)
    one[8 * 2 + 5] = 1.0  # row 2, column 5
    mask = cell_masks(one, 8, (150, 150))
    rows, cols = np.nonzero(mask)
    assert (rows.min(), rows.max(), cols.min(), cols.max()) == (38, 56, 94, 112)
    every = cell_masks(np.eye(PLAYERS, dtype=np.float32), 8, (150, 150))
    np.testing.assert_array_equal(every.sum(0), 1.0)  # the cells tile the input


@pytest.fixture(scope="module")
def net_and_baseline(default_bundle: Path, celebs_root: Path):
    return small_explainer(default_bundle, celebs_root)


def test_the_fit_recovers_the_shapley_values_of_an_additive_game(
    default_bundle: Path, celebs_root: Path, net_and_baseline
) -> None:
    """In an additive game a cell's Shapley value is its own weight: here the weights are a
    fixed function of each real face's trunk features, which the head sees, so a fit on some
    faces must give them on others. With 16 coalitions per face instead of 64 the head learns
    each train face's few sums by heart (train loss 0.003, held-out 2.0, correlation 0.81)."""
    net, _ = net_and_baseline
    preprocess = Preprocessor(read_meta(default_bundle).input)
    inputs, labels = split_faces(default_bundle, celebs_root, "train", preprocess, 96)
    with torch.no_grad():
        features = net.trunk(torch.from_numpy(inputs)).numpy()
    weights = features[:, :8].reshape(len(inputs), 8, PLAYERS)  # (N, C, cells)
    weights = (weights - weights.mean()) / weights.std()
    coalitions = kernel_coalitions(np.random.default_rng(0), len(inputs), 64, PLAYERS)
    samples = Samples(
        features,
        weights.sum(-1).astype(np.float32),
        coalitions,
        np.einsum("nmd,ncd->nmc", coalitions, weights).astype(np.float32),
        labels,
    )
    train, held = samples.subset(np.arange(72)), samples.subset(np.arange(72, 96))
    head, history = fit_head(
        train, held, np.zeros(8, np.float32), FitConfig(epochs=60, batch_faces=8, lr=3e-3)
    )
    targets = held.values - held.logits[:, None] * held.coalitions.mean(-1, keepdims=True)
    even_spread = float(np.mean(targets**2))  # the loss of values spread evenly over the cells
    with torch.no_grad():
        raw = head(torch.from_numpy(held.features)).flatten(2)
    values = efficient(raw, torch.from_numpy(held.logits)).numpy()
    np.testing.assert_allclose(values.sum(-1), held.logits, rtol=1e-4, atol=1e-3)
    correlation = np.corrcoef(values.ravel(), weights[72:].ravel())[0, 1]
    assert min(h["val_loss"] for h in history) < 0.2 * even_spread
    assert correlation > 0.9, correlation


def explainer_bundle(default_bundle: Path, into: Path, net, baseline) -> Path:
    """A copy of the default bundle (files linked) with the explainer ``net`` exported into it
    and listed in meta.json as the command lists it."""
    into.mkdir()
    for path in default_bundle.iterdir():
        # the bundle's own explainer is not linked: the export below must not write through it
        if path.name not in {"meta.json", ONE_PASS_FILE}:
            (into / path.name).symlink_to(path)
    (into / "meta.json").write_text((default_bundle / "meta.json").read_text())
    export_onnx(net, torch.zeros(1, 3, 150, 150), into / ONE_PASS_FILE)
    entry = {"method": "fastshap", "file": ONE_PASS_FILE, "grid": 8, "explains": "test"}
    update_meta(into, lambda raw: raw.update(one_pass=entry), files=[ONE_PASS_FILE])
    return into


def test_the_service_loads_the_exported_explainer_and_checks_it(
    default_bundle: Path, celebs_root: Path, tmp_path: Path, net_and_baseline
) -> None:
    net, baseline = net_and_baseline
    bundle = explainer_bundle(default_bundle, tmp_path / "b", net, baseline)
    settings = Settings(_env_file=None, model=bundle, threads=2, precision="fp32")
    model = load_model(settings)
    assert model.one_pass is not None and model.one_pass.grid == 8
    x = np.random.default_rng(0).normal(size=(2, 3, 150, 150)).astype(np.float32)
    with torch.no_grad():
        expected = net(torch.from_numpy(x)).numpy()
    np.testing.assert_allclose(model.one_pass.run(x), expected, atol=1e-4)
    np.testing.assert_allclose(model.one_pass.baseline_logits, baseline, atol=1e-4)

    meta = json.loads((bundle / "meta.json").read_text())
    meta["files"][ONE_PASS_FILE]["sha256"] = "0" * 64
    (bundle / "meta.json").write_text(json.dumps(meta))
    with pytest.raises(BundleError, match=f"{ONE_PASS_FILE} has sha256"):
        load_model(settings)
    del meta["files"][ONE_PASS_FILE]
    (bundle / "meta.json").write_text(json.dumps(meta))
    with pytest.raises(BundleError, match="does not list the one-pass explainer"):
        load_model(settings)


@pytest.mark.slow
def test_the_faithfulness_gate_refuses_a_map_that_points_the_wrong_way(
    default_bundle: Path, celebs_root: Path
) -> None:
    model = load_model(Settings(_env_file=None, model=default_bundle, threads=2, precision="fp32"))
    committed = model.one_pass
    assert committed is not None, "the committed bundle ships its one-pass explainer"
    # the explainer's values negated, run on their own (``predict=None``: not the grafted pass)
    inverted = dataclasses.replace(committed, run=lambda batch: -committed.run(batch), predict=None)
    preprocess = Preprocessor(read_meta(default_bundle).input)
    faces, _ = split_faces(default_bundle, celebs_root, "test", preprocess, 3)
    result = faithfulness(model.engine.run, inverted, list(faces))
    assert result["passed"] is False
    methods = result["methods"]
    assert methods["fastshap"]["deletion_auc"] > methods["lime"]["deletion_auc"] + 0.02
    assert methods["fastshap"]["deletion_ratio_to_random"] > 1.0  # worse than a random map


def test_the_trunk_stacks_the_deeper_stages_on_the_grid_stages_cells(default_bundle: Path) -> None:
    classifier, _, _ = classifier_from_bundle(default_bundle)
    x = torch.from_numpy(np.random.default_rng(1).normal(size=(2, 3, 150, 150)).astype(np.float32))
    with torch.no_grad():
        activations, h = {}, x
        for name, stage in classifier.backbone.stages():
            h = stage(h)
            activations[name] = h
        alone = Trunk(classifier, "layer3").eval()(x)
        stacked = Trunk(classifier, "layer3", ("layer4", "layer5")).eval()(x)

    assert alone.shape == (2, 128, 8, 8)
    assert stacked.shape == (2, 128 + 256 + 256, 8, 8)
    torch.testing.assert_close(stacked[:, :128], activations["layer3"])
    # layer5's 2 x 2 cells laid on the 8 x 8 grid: the corner cells take the corner values,
    # and each cell's value lies within the range of the deeper stage's
    layer5 = stacked[:, 384:]
    torch.testing.assert_close(layer5[:, :, 0, 0], activations["layer5"][:, :, 0, 0])
    torch.testing.assert_close(layer5[:, :, -1, -1], activations["layer5"][:, :, -1, -1])
    assert float(layer5.max()) <= float(activations["layer5"].max()) + 1e-5
    with pytest.raises(ValueError, match="context stages must come after layer3"):
        Trunk(classifier, "layer3", ("layer2",))
    with pytest.raises(ValueError, match="no stage 'layer9'"):
        Trunk(classifier, "layer3", ("layer9",))


def test_an_ensemble_averages_heads_fitted_from_successive_seeds() -> None:
    rng = np.random.default_rng(2)
    faces, channels, classes = 24, 16, 8
    samples = Samples(
        rng.normal(size=(faces, channels, 8, 8)).astype(np.float32),
        rng.normal(size=(faces, classes)).astype(np.float32),
        kernel_coalitions(rng, faces, 8, PLAYERS),
        rng.normal(size=(faces, 8, classes)).astype(np.float32),
        rng.integers(0, classes, size=faces),
    )
    baseline = np.zeros(classes, dtype=np.float32)
    config = FitConfig(epochs=2, width=8, seed=5)
    heads, histories = fit_heads(samples, samples, baseline, config, 3)

    assert len(heads.heads) == 3 and len(histories) == 3
    single, _ = fit_head(samples, samples, baseline, dataclasses.replace(config, seed=6))
    torch.testing.assert_close(heads.heads[1].state_dict(), single.state_dict())
    features = torch.from_numpy(samples.features[:4])
    with torch.no_grad():
        each = [head(features) for head in heads.heads]
        torch.testing.assert_close(heads(features), sum(each) / 3)
        assert not torch.allclose(each[0], each[1])  # different seeds, different heads
    with pytest.raises(ValueError, match="at least one head"):
        Heads([])
