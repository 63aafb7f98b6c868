"""A small one-pass explainer fitted for real to the default bundle, for tests: the trunk of the
bundle's own model and a head fitted on a few train faces' real masked values (seconds, not the
command's minutes). Its maps are rough; what the tests check holds for any fitted head."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from service.bundle.format import ONNX_FILE, read_meta
from service.bundle.preprocess import Preprocessor
from service.explain.one_pass import OnePassModel
from training.from_bundle import classifier_from_bundle
from training.one_pass.command import onnx_forward
from training.one_pass.fit import FitConfig, fit_head
from training.one_pass.net import OnePassNet, Trunk
from training.one_pass.samples import make_samples, split_faces

GRID, LAYER = 8, "layer3"


def small_explainer(bundle: Path, images: Path, faces: int = 24) -> tuple[OnePassNet, np.ndarray]:
    """(the explainer network, the model's logits on the all-hidden image)."""
    meta = read_meta(bundle)
    preprocess = Preprocessor(meta.input)
    classifier, _, _ = classifier_from_bundle(bundle)
    trunk = Trunk(classifier, LAYER).eval()
    forward = onnx_forward(bundle / ONNX_FILE, 2, "logits")

    def features(batch: np.ndarray) -> np.ndarray:
        with torch.no_grad():
            return trunk(torch.from_numpy(batch)).numpy()

    train = make_samples(
        forward,
        features,
        *split_faces(bundle, images, "train", preprocess, faces),
        grid=GRID,
        masks=8,
        seed=0,
    )
    val = make_samples(
        forward,
        features,
        *split_faces(bundle, images, "val", preprocess, 8),
        grid=GRID,
        masks=8,
        seed=1,
    )
    baseline = forward(np.zeros((1, 3, meta.input.height, meta.input.width), np.float32))[0]
    head, _ = fit_head(train, val, baseline, FitConfig(epochs=5, width=32))
    return OnePassNet(trunk, head).eval(), baseline


def as_one_pass(net: OnePassNet, baseline: np.ndarray) -> OnePassModel:
    """``net`` run by torch, as the service's method takes it."""

    def run(batch: np.ndarray) -> np.ndarray:
        with torch.no_grad():
            return net(torch.from_numpy(np.ascontiguousarray(batch))).numpy()

    return OnePassModel(run, baseline, GRID)
