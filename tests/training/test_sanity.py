"""The cascading model-parameter randomisation test (training/sanity.py) on the real bundle and
real test faces: the cascade's order, that the similarity of a map with itself is 1 and drops
once parameters are re-drawn, and that ``python -m training sanity`` stores the result in
meta.json and nothing else (``--dry-run``: nothing at all)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from service.bundle.checks import load_twin
from service.bundle.format import read_meta
from service.bundle.preprocess import Preprocessor
from service.explain import ModelHandle
from service.explain.heatmap import Heatmap
from training.__main__ import main
from training.sanity import (
    PASS_BELOW,
    cascade_stages,
    explain_all,
    load_faces,
    randomise,
    similarity,
    twin_forward,
)

METHODS = ("gradient", "gradcam")
CASCADE = ["head+fc", "layer5", "layer4", "layer3", "layer2", "layer1", "stem"]


@pytest.fixture(scope="module")
def meta(default_bundle: Path):
    return read_meta(default_bundle)


@pytest.fixture(scope="module")
def trained_twin(default_bundle: Path):
    """The trained twin, for the tests that only read it."""
    return load_twin(default_bundle)


@pytest.fixture(scope="module")
def faces(default_bundle: Path, celebs_root: Path, meta):
    return load_faces(default_bundle, celebs_root, 2, Preprocessor(meta.input))


def _maps(twin, meta, faces):
    handle = ModelHandle(twin_forward(twin), twin, meta.gradcam_layer)
    return explain_all(handle, METHODS, faces)


def test_the_cascade_runs_from_the_head_down_and_covers_every_parameter(trained_twin, meta):
    twin = trained_twin

    stages = cascade_stages(twin, [layer.name for layer in meta.layers])

    assert [stage.name for stage in stages] == CASCADE
    names = [name for stage in stages for name in stage.parameters]
    assert len(names) == len(set(names))  # no parameter in two stages
    assert set(names) == {name for name, _ in twin.named_parameters()}
    assert all(".layer5." in name for name in stages[1].parameters)


def test_an_unknown_layer_is_refused(trained_twin):
    with pytest.raises(ValueError, match="layer9"):
        cascade_stages(trained_twin, ["stem", "layer9"])


def test_the_faces_are_test_faces_with_their_true_labels(default_bundle, faces):
    test = json.loads((default_bundle / "split.json").read_text())["splits"]["test"]

    assert [label for _, label, _ in faces] == [test[0][1], test[len(test) // 2][1]]
    assert all(x.shape == (3, 150, 150) and x.dtype == np.float32 for x, _, _ in faces)


def test_the_trained_twin_against_itself_is_fully_similar(
    default_bundle, trained_twin, meta, faces
):
    first = _maps(trained_twin, meta, faces)
    second = _maps(load_twin(default_bundle), meta, faces)

    for name in METHODS:
        for a, b in zip(first[name], second[name], strict=True):
            rho, ssim = similarity(a, b)
            assert rho == pytest.approx(1.0)
            assert ssim == pytest.approx(1.0)


def test_randomising_a_stage_redraws_it_alone_and_changes_the_maps(
    default_bundle, trained_twin, meta, faces
):
    twin = load_twin(default_bundle)
    stages = cascade_stages(twin, [layer.name for layer in meta.layers])
    before = {name: p.clone() for name, p in twin.named_parameters()}
    buffers = {name: b.clone() for name, b in twin.named_buffers()}

    randomise(twin, stages[0], seed=0)

    after = dict(twin.named_parameters())
    changed = {name for name in before if not torch.equal(before[name], after[name])}
    assert changed == set(stages[0].parameters)
    assert all(torch.equal(b, buffers[name]) for name, b in twin.named_buffers())  # BN stats
    trained, randomised = _maps(trained_twin, meta, faces), _maps(twin, meta, faces)
    # Grad-CAM reads the target's class weights, which are now random: its maps change.
    rhos = [
        similarity(a, b)[0] for a, b in zip(trained["gradcam"], randomised["gradcam"], strict=True)
    ]
    assert max(rhos) < 0.9


def test_randomising_is_seeded(default_bundle, meta):
    one, two = load_twin(default_bundle), load_twin(default_bundle)
    stage = cascade_stages(one, [layer.name for layer in meta.layers])[1]

    randomise(one, stage, seed=3)
    randomise(two, stage, seed=3)

    p1, p2 = dict(one.named_parameters()), dict(two.named_parameters())
    assert all(torch.equal(p1[name], p2[name]) for name in stage.parameters)


def test_a_negligible_randomised_map_counts_as_dissimilar():
    def heatmap(values: np.ndarray, negligible: bool) -> Heatmap:
        return Heatmap(
            values=values,
            method="gradient",
            target=0,
            signed=False,
            value_range=(0.0, 1.0),
            units="",
            scale=1.0,
            logits=np.zeros(8, np.float32),
            negligible=negligible,
        )

    trained = heatmap(np.random.default_rng(0).random((20, 20)), False)

    assert similarity(trained, heatmap(np.zeros((20, 20)), True)) == (0.0, 0.0)
    assert similarity(trained, trained) == pytest.approx((1.0, 1.0))


@pytest.fixture()
def bundle_copy(default_bundle: Path, tmp_path: Path) -> Path:
    """meta.json and split.json copied (writable), the model files linked."""
    copy = tmp_path / "celebs8"
    copy.mkdir()
    for name in ("model.onnx", "model.int8.onnx", "model.pt2", "one_pass.onnx", "open_set"):
        (copy / name).symlink_to(default_bundle / name)
    for name in ("meta.json", "split.json"):
        shutil.copy(default_bundle / name, copy / name)
    return copy


def _cli(bundle: Path, celebs_root: Path, *extra: str) -> int:
    return main(
        ["sanity", "--bundle", str(bundle), "--data", str(celebs_root), "--faces", "2"]
        + ["--methods", ",".join(METHODS), *extra]
    )


@pytest.mark.training
def test_the_command_stores_the_cascade_and_keeps_every_other_key(bundle_copy, celebs_root):
    before = json.loads((bundle_copy / "meta.json").read_text())

    assert _cli(bundle_copy, celebs_root) == 0

    text = (bundle_copy / "meta.json").read_text()
    after = json.loads(text)
    assert text.startswith('{\n  "schema_version"')  # the file's 2-space indent
    assert [k for k in after if k != "sanity"] == [k for k in before if k != "sanity"]
    assert {k: v for k, v in after.items() if k != "sanity"} == {
        k: v for k, v in before.items() if k != "sanity"
    }
    sanity = read_meta(bundle_copy).sanity
    assert sanity is not None and sanity.faces == 2 and sanity.split == "test"
    assert sanity.pass_below == PASS_BELOW
    assert list(sanity.methods) == list(METHODS)
    for method in sanity.methods.values():
        assert [stage.stage for stage in method.stages] == CASCADE
        assert method.passed == all(stage.spearman < PASS_BELOW for stage in method.stages)
        assert all(-1 <= stage.spearman <= 1 and -1 <= stage.ssim <= 1 for stage in method.stages)


@pytest.mark.training
def test_a_dry_run_writes_nothing(bundle_copy, celebs_root, capsys):
    before = (bundle_copy / "meta.json").read_bytes()

    assert _cli(bundle_copy, celebs_root, "--dry-run") == 0

    assert (bundle_copy / "meta.json").read_bytes() == before
    out = capsys.readouterr().out
    assert "| gradcam |" in out and "not changed" in out


def test_an_unknown_method_fails_with_the_valid_ones(bundle_copy, celebs_root, caplog):
    before = (bundle_copy / "meta.json").read_bytes()

    assert _cli(bundle_copy, celebs_root, "--methods", "gradient,saliency") == 2

    assert "unknown method saliency" in caplog.text and "integrated_gradients" in caplog.text
    assert (bundle_copy / "meta.json").read_bytes() == before
