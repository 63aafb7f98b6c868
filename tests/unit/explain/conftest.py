"""The real default bundle and real test-split faces, loaded once for the explanation tests."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from service.bundle.checks import load_twin, probe_batch
from service.bundle.format import BundleMeta, read_meta
from service.bundle.preprocess import Preprocessor
from service.explain import ModelHandle
from service.inference.engine import create_session
from service.inference.one_pass_load import load_one_pass

THREADS = 2


@pytest.fixture(scope="session")
def bundle_meta(default_bundle: Path) -> BundleMeta:
    return read_meta(default_bundle)


@pytest.fixture(scope="session")
def preprocess(bundle_meta: BundleMeta) -> Preprocessor:
    return Preprocessor(bundle_meta.input)


@pytest.fixture(scope="session")
def handle(default_bundle: Path, bundle_meta: BundleMeta) -> ModelHandle:
    """ONNX forward (CPU, two threads), the torch twin and the one-pass explainer of the default
    bundle."""
    session = create_session(default_bundle / "model.onnx", "cpu", THREADS)

    def forward(batch: np.ndarray) -> np.ndarray:
        return session.run(["logits"], {"input": batch})[0]

    probe = probe_batch(Preprocessor(bundle_meta.input))
    one_pass = load_one_pass(default_bundle, bundle_meta, forward, probe, threads=THREADS)
    return ModelHandle(
        forward, load_twin(default_bundle), bundle_meta.gradcam_layer, one_pass=one_pass
    )


@pytest.fixture(scope="session")
def test_faces(
    default_bundle: Path, celebs_root: Path, preprocess: Preprocessor
) -> list[tuple[np.ndarray, int, Image.Image]]:
    """One test-split face per class from the bundle's split.json: (model input, class index,
    RGB photo)."""
    split = json.loads((default_bundle / "split.json").read_text())
    first_of_class: dict[int, str] = {}
    for relative, label in split["splits"]["test"]:
        first_of_class.setdefault(label, relative)
    faces = []
    for label, relative in sorted(first_of_class.items()):
        photo = Image.open(celebs_root / relative).convert("RGB")
        faces.append((preprocess(photo), label, photo))
    return faces


@pytest.fixture(scope="session")
def face(test_faces: list[tuple[np.ndarray, int, Image.Image]]) -> tuple[np.ndarray, int]:
    """One face and its class index."""
    x, label, _ = test_faces[0]
    return x, label
