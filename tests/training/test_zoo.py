"""The zoo (``python -m training zoo``): its from-scratch CNN, its members, a tiny real run whose
bundle the service's load-time checks accept, and ``compare``'s math and report."""

from __future__ import annotations

import argparse
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from service.bundle.format import read_meta
from service.inference.model import load_model
from service.settings import Settings
from training.__main__ import get_args_parser, main
from training.backbones import build_backbone
from training.compare import agreement, compare, map_correlation, tables
from training.model import FaceClassifier
from training.serve_timing import measure_predict
from training.zoo import fit_argv, members

ROOT = Path(__file__).resolve().parents[2]
SCRATCH_BUNDLE = ROOT / "models" / "celebs8-scratch"


def _zoo_args(*extra: str) -> argparse.Namespace:
    return get_args_parser().parse_args(["zoo", *extra])


def test_scratch_cnn_gives_logits_activations_and_an_embedding():
    backbone, prep = build_backbone("scratch-cnn", "none")
    model = FaceClassifier(backbone, 8).eval()
    x = torch.randn(2, 3, prep.height, prep.width)
    logits, activations, embedding = model.forward_with_embedding(x)
    assert logits.shape == (2, 8)
    assert embedding.shape == (2, backbone.embedding_dim)
    assert list(activations) == ["block1", "block2", "block3", "block4"]
    assert backbone.gradcam_layer in activations
    assert activations["block4"].shape[-2:] == (8, 8)  # 64 px, three 2x2 pools
    assert sum(p.numel() for p in model.parameters()) < 500_000  # a bundle of a few MB


def test_scratch_cnn_learns_a_step():
    torch.manual_seed(0)
    backbone, _ = build_backbone("scratch-cnn", "default")
    model = FaceClassifier(backbone, 3)
    x, y = torch.randn(8, 3, 64, 64), torch.tensor([0, 1, 2, 0, 1, 2, 0, 1])
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-2)
    before = torch.nn.functional.cross_entropy(model(x), y).item()
    for _ in range(5):
        loss = torch.nn.functional.cross_entropy(model(x), y)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    assert loss.item() < before


def test_members_are_fit_command_lines():
    args = _zoo_args("--members", "linear,scratch", "--scratch-epochs", "7")
    linear, scratch = members(args)
    assert (linear.bundle, scratch.bundle) == ("celebs8-linear", "celebs8-scratch")
    assert fit_argv(linear, args)[:7] == [
        "fit",
        "--backbone",
        "dlib-resnet29",
        "--stages",
        "none",
        "--export",
        "baseline",
    ]
    argv = fit_argv(scratch, args)
    assert argv[argv.index("--epochs") + 1] == "7"
    assert argv[argv.index("--framing") + 1] == "dlib-chip"  # the service frames faces alike
    assert argv[argv.index("--out") + 1] == str(Path("models") / "celebs8-scratch")
    get_args_parser().parse_args(argv)  # fit accepts it


def test_imagenet_member_fails_clearly_without_weights(tmp_path):
    with pytest.raises(ValueError, match="--imagenet-weights"):
        members(_zoo_args("--members", "imagenet"))
    with pytest.raises(FileNotFoundError, match="missing.pth"):
        members(
            _zoo_args("--members", "imagenet", "--imagenet-weights", str(tmp_path / "missing.pth"))
        )
    with pytest.raises(ValueError, match="choose from"):
        members(_zoo_args("--members", "linear,vgg"))


def test_stages_none_cannot_fine_tune(caplog):
    assert main(["fit", "--stages", "none", "--export", "fine-tuned", "--others", "none"]) == 2
    assert "--stages none trains only the frozen-feature baseline" in caplog.text


def test_agreement_is_the_share_of_equal_labels():
    a = np.array([[1.0, 0.0], [0.0, 1.0], [2.0, 1.0], [0.0, 3.0]])
    b = np.array([[5.0, 0.0], [1.0, 0.0], [2.0, 1.0], [1.0, 0.0]])
    assert agreement(a, b) == 0.5
    assert agreement(a, a) == 1.0
    with pytest.raises(ValueError):
        agreement(a, b[:3])


def test_map_correlation_ranks_absolute_values_on_the_smaller_grid():
    rng = np.random.default_rng(0)
    m = rng.random((16, 16))
    assert map_correlation(m, m) == pytest.approx(1.0)
    assert map_correlation(m, -m) == pytest.approx(1.0)  # absolute values: sign ignored
    assert map_correlation(m, 1.0 - m) == pytest.approx(-1.0)  # reversed ranking
    smooth = np.add.outer(np.arange(8.0), np.arange(8.0))  # a ramp, at two resolutions
    big = np.kron(smooth, np.ones((4, 4)))  # 32 x 32
    assert map_correlation(big, smooth) > 0.95
    assert np.isnan(map_correlation(np.ones((8, 8)), m))
    independent = [map_correlation(rng.random((16, 16)), rng.random((16, 16))) for _ in range(20)]
    assert abs(np.mean(independent)) < 0.1


@pytest.mark.training
def test_tiny_zoo_scratch_bundle_passes_the_service_load_checks(celebs_root, data_root, tmp_path):
    code = main(
        [
            "zoo",
            "--members",
            "scratch",
            "--data",
            str(celebs_root),
            "--others",
            str(data_root / "others"),
            "--limit-per-class",
            "8",  # 6 training faces per class: one batch of 32
            "--scratch-epochs",
            "1",
            "--out-root",
            str(tmp_path / "models"),
            "--run-root",
            str(tmp_path / "runs"),
            "--table",
            str(tmp_path / "zoo.md"),
            "--reference",
            "none",
            "--no-compare",
        ]
    )
    assert code == 0
    bundle = tmp_path / "models" / "celebs8-scratch"
    meta = read_meta(bundle)
    assert meta.name == "celebs8-scratch" and meta.architecture["backbone"] == "scratch-cnn"
    assert (meta.input.height, meta.input.width) == (64, 64)
    assert meta.input.framing is not None and meta.face_alignment is not None
    assert meta.open_set is not None and meta.open_set.gallery in meta.files
    served = load_model(Settings(model=bundle))  # sha256, parity, open set: raises if refused
    assert served.meta.name == "celebs8-scratch"
    assert "celebs8-scratch" in (tmp_path / "zoo.md").read_text()


@pytest.fixture(scope="module")
def scratch_bundle() -> Path:
    if not (SCRATCH_BUNDLE / "meta.json").is_file():
        pytest.fail(f"the zoo's committed bundle is missing at {SCRATCH_BUNDLE}", pytrace=False)
    return SCRATCH_BUNDLE


@pytest.mark.slow
def test_compare_on_two_real_bundles(default_bundle, scratch_bundle, data_root, tmp_path):
    twin = tmp_path / "celebs8-scratch-copy"
    shutil.copytree(scratch_bundle, twin)
    figures, pairs, methods, test_faces = compare(
        [default_bundle, scratch_bundle, twin],
        data_root,
        faces=2,
        requests=0,
        methods=["gradcam", "occlusion"],
        steps=5,
        threads=2,
        log_dir=tmp_path,
    )
    assert [f.name for f in figures] == ["celebs8", "celebs8-scratch", "celebs8-scratch"]
    for f, bundle in zip(figures, [default_bundle, scratch_bundle], strict=False):
        recorded = json.loads((bundle / "meta.json").read_text())["metrics"]["test"]["accuracy"]
        assert f.test_accuracy == pytest.approx(recorded, abs=1e-9)  # the bundle's own figure
        assert f.open_set is not None and 0.5 < f.open_set["auroc"] <= 1.0
        assert 0 <= f.deletion["occlusion"] <= 1 and 0 <= f.insertion["gradcam"] <= 1
    assert test_faces == 255
    assert 0 < pairs[0]["agreement"] < 1
    same = pairs[-1]  # the scratch bundle against its copy: the same model
    assert same["agreement"] == 1.0
    assert same["spearman"] == {"gradcam": pytest.approx(1.0), "occlusion": pytest.approx(1.0)}
    text = tables(figures, pairs, methods, 2, test_faces)
    assert "| celebs8 vs celebs8-scratch |" in text and "| occlusion |" in text


@pytest.mark.slow
def test_predict_timing_starts_the_service_on_a_zoo_bundle(scratch_bundle, celebs_root, tmp_path):
    photos = sorted((celebs_root / "tom_hanks").iterdir())[:2]
    cost = measure_predict(scratch_bundle, photos, 2, tmp_path)
    assert cost.requests == 2 and 0 < cost.median_ms <= cost.p90_ms
    assert cost.cpu_ms > 0
