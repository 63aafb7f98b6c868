"""The twin with each convolution's affine folded in computes what the exported twin computes:
logits, activations and input gradients of real test faces, to float32 rounding."""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from service.bundle.checks import load_twin
from service.bundle.format import read_meta
from service.bundle.preprocess import Preprocessor
from service.inference.twin_fold import fold_affine

aten = torch.ops.aten


def operations(module: torch.nn.Module) -> Counter[str]:
    graph = module.graph  # type: ignore[union-attr]
    return Counter(str(node.target) for node in graph.nodes if node.op == "call_function")


@pytest.fixture(scope="module")
def faces(default_bundle: Path, celebs_root: Path) -> torch.Tensor:
    """Four test-split faces of different people, as model inputs."""
    preprocess = Preprocessor(read_meta(default_bundle).input)
    split = json.loads((default_bundle / "split.json").read_text())
    first: dict[int, str] = {}
    for relative, label in split["splits"]["test"]:
        first.setdefault(label, relative)
    photos = [Image.open(celebs_root / first[label]).convert("RGB") for label in sorted(first)[:4]]
    return torch.from_numpy(np.stack([preprocess(photo) for photo in photos]))


def gradient_pass(
    twin: torch.nn.Module, x: torch.Tensor
) -> tuple[torch.Tensor, dict[str, torch.Tensor], torch.Tensor]:
    inputs = x.clone().requires_grad_(True)
    logits, activations = twin(inputs)
    (gradient,) = torch.autograd.grad(logits.max(dim=1).values.sum(), inputs)
    return logits.detach(), {k: v.detach() for k, v in activations.items()}, gradient


def test_every_convolution_of_the_bundles_twin_folds_and_answers_as_before(default_bundle, faces):
    exported, folded = load_twin(default_bundle), load_twin(default_bundle)
    before = operations(exported)

    assert fold_affine(folded) == before[str(aten.conv2d.default)] == 29
    after = operations(folded)
    assert str(aten.mul.Tensor) not in after and str(aten.unsqueeze.default) not in after
    assert sum(after.values()) < sum(before.values()) / 2
    names = [name for name, _ in folded.named_parameters()]
    assert names and not [name for name in names if "affine" in name]

    logits, activations, gradient = gradient_pass(exported, faces)
    logits_f, activations_f, gradient_f = gradient_pass(folded, faces)
    assert logits_f.argmax(1).tolist() == logits.argmax(1).tolist()
    np.testing.assert_allclose(logits_f, logits, rtol=0, atol=1e-4)
    assert activations_f.keys() == activations.keys()
    for name, value in activations.items():
        scale = float(value.abs().max())
        np.testing.assert_allclose(activations_f[name], value, rtol=0, atol=1e-5 * scale)
    # the gradient's sums run in another order: where a unit sits at ReLU's zero, its gate may
    # flip and move the gradient near it (0.3 % of the pixels of one of these faces, by up to
    # 0.25 % of its largest value, as channels-last weights do to the exported twin)
    difference = (gradient_f - gradient).abs() / gradient.abs().amax(dim=(1, 2, 3), keepdim=True)
    assert float(difference.max()) < 5e-3
    assert float((difference > 1e-5).float().mean()) < 0.01


def test_folding_twice_finds_nothing_left(default_bundle, faces):
    twin = load_twin(default_bundle)
    fold_affine(twin)
    logits = twin(faces)[0].detach()

    assert fold_affine(twin) == 0
    np.testing.assert_array_equal(twin(faces)[0].detach(), logits)


class Affine(torch.nn.Module):
    """The face network's per-channel scale and shift (training.backbones.dlib_resnet)."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.weight = torch.nn.Parameter(torch.rand(channels) + 0.5)
        self.bias = torch.nn.Parameter(torch.randn(channels))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.weight[:, None, None] + self.bias[:, None, None]


class Shapes(torch.nn.Module):
    """Three convolutions, each followed by an affine: the first foldable, the second's raw
    output also returned, the third sharing the first's weight."""

    def __init__(self) -> None:
        super().__init__()
        self.first, self.second = torch.nn.Conv2d(3, 4, 3, padding=1), torch.nn.Conv2d(4, 4, 1)
        self.third_bias = torch.nn.Parameter(torch.randn(4))
        self.affines = torch.nn.ModuleList([Affine(4) for _ in range(3)])

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        a = torch.relu(self.affines[0](self.first(x)))
        raw = self.second(a)
        b = self.affines[1](raw)
        shared = torch.nn.functional.conv2d(a, self.second.weight, self.third_bias)
        return b, raw, self.affines[2](shared)


def test_only_a_convolution_nothing_else_reads_folds():
    """The first folds; the second's output is returned raw, the third reads the second's
    weight: both stay, and every output is what it was."""
    torch.manual_seed(0)
    x = torch.randn(2, 3, 8, 8)
    module = torch.export.export(Shapes().eval(), (x,)).module()
    expected = [t.detach() for t in module(x)]

    assert fold_affine(module) == 1
    assert operations(module)[str(aten.mul.Tensor)] == 2
    for got, want in zip(module(x), expected, strict=True):
        np.testing.assert_allclose(got.detach(), want, rtol=0, atol=1e-5)
