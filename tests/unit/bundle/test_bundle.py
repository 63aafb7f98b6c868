from __future__ import annotations

import json
import shutil

import numpy as np
import pytest

from service.bundle.checks import check_parity, load_twin, probe_batch, verify_files
from service.bundle.format import BundleError, read_meta
from service.bundle.preprocess import Preprocessor
from service.inference.engine import create_session


@pytest.fixture(scope="module")
def meta(default_bundle):
    return read_meta(default_bundle)


@pytest.fixture(scope="module")
def loaded(default_bundle, meta):
    """(ONNX forward, twin, probe) of the default bundle, loaded once for this module."""
    session = create_session(default_bundle / "model.onnx", "cpu", threads=2)
    forward = lambda x: session.run(["logits"], {"input": x})[0]  # noqa: E731
    return forward, load_twin(default_bundle), probe_batch(Preprocessor(meta.input))


def test_default_bundle_passes_every_check(default_bundle, meta, loaded):
    forward, twin, probe = loaded

    verify_files(default_bundle, meta)
    max_diff = check_parity(meta, forward, twin, probe)

    assert max_diff <= meta.parity_tolerance
    assert len(meta.classes) == 8


def test_probe_is_fixed(meta):
    first = probe_batch(Preprocessor(meta.input))
    second = probe_batch(Preprocessor(meta.input))

    assert first.shape == (2, 3, meta.input.height, meta.input.width)
    np.testing.assert_array_equal(first, second)


def test_logits_that_drift_fail_parity(meta, loaded):
    forward, twin, probe = loaded

    with pytest.raises(BundleError, match="disagree"):
        check_parity(meta, lambda x: forward(x) + 10 * meta.parity_tolerance, twin, probe)


def test_wrong_class_count_fails_parity(meta, loaded):
    forward, twin, probe = loaded

    with pytest.raises(BundleError, match="shape"):
        check_parity(meta, lambda x: forward(x)[:, :-1], twin, probe)


def test_a_twin_without_the_listed_layers_fails(meta, loaded):
    forward, twin, probe = loaded

    def twin_without_activations(x):
        logits, _ = twin(x)
        return logits, {}

    with pytest.raises(BundleError, match="no activation"):
        check_parity(meta, forward, twin_without_activations, probe)


@pytest.fixture
def bundle_copy(default_bundle, tmp_path):
    """meta.json and split.json copied (editable), the model files linked."""
    copy = tmp_path / "bundle"
    copy.mkdir()
    for name in ("model.onnx", "model.pt2", "open_set"):
        (copy / name).symlink_to(default_bundle / name)
    for name in ("meta.json", "split.json"):
        shutil.copy(default_bundle / name, copy / name)
    meta = json.loads((copy / "meta.json").read_text())
    meta["files"] = {
        name: info
        for name, info in meta["files"].items()
        if "/" not in name or name.startswith("open_set/")
    }
    (copy / "meta.json").write_text(json.dumps(meta))
    return copy


def _edit_meta(bundle, **changes):
    meta = json.loads((bundle / "meta.json").read_text())
    meta.update(changes)
    (bundle / "meta.json").write_text(json.dumps(meta))


def test_changed_file_fails_the_sha256_check(bundle_copy):
    (bundle_copy / "split.json").write_text("{}")

    with pytest.raises(BundleError, match="split.json has sha256"):
        verify_files(bundle_copy, read_meta(bundle_copy))


def test_missing_file_fails_the_check(bundle_copy):
    (bundle_copy / "split.json").unlink()

    with pytest.raises(BundleError, match="split.json is missing"):
        verify_files(bundle_copy, read_meta(bundle_copy))


def test_unsupported_schema_version(bundle_copy):
    _edit_meta(bundle_copy, schema_version=99)

    with pytest.raises(BundleError, match="schema_version 99"):
        read_meta(bundle_copy)


def test_a_framing_in_a_version_1_bundle_is_refused(bundle_copy):
    """A reader of version 1 would ignore ``input.framing``: such a bundle must say 2."""
    meta = json.loads((bundle_copy / "meta.json").read_text())
    assert meta["schema_version"] == 2 and meta["input"]["framing"] is not None
    _edit_meta(bundle_copy, schema_version=1)

    with pytest.raises(BundleError, match="input.framing needs schema_version 2"):
        read_meta(bundle_copy)


def test_meta_without_classes_is_refused(bundle_copy):
    _edit_meta(bundle_copy, classes=[])

    with pytest.raises(BundleError, match="does not match the bundle format"):
        read_meta(bundle_copy)


def test_meta_that_is_not_json(bundle_copy):
    (bundle_copy / "meta.json").write_text("{not json")

    with pytest.raises(BundleError, match="not valid JSON"):
        read_meta(bundle_copy)


def test_missing_directory(tmp_path):
    with pytest.raises(BundleError, match="directory does not exist"):
        read_meta(tmp_path / "nothing")


def test_unknown_meta_keys_are_kept(bundle_copy):
    _edit_meta(bundle_copy, future_field={"x": 1})

    assert read_meta(bundle_copy).model_dump()["future_field"] == {"x": 1}


def test_unloadable_twin(tmp_path):
    (tmp_path / "model.pt2").write_bytes(b"not a torch archive")

    with pytest.raises(BundleError, match="cannot load the torch twin"):
        load_twin(tmp_path)


def test_the_twin_runs_channels_last_with_the_default_layouts_gradients(meta, loaded):
    """Channels-last weights (oneDNN for every convolution) change the input gradient only by
    the order of sums: the same map as the default layout's, to float32 rounding."""
    import torch

    _, twin, probe = loaded
    convolutions = [p for p in twin.parameters() if p.dim() == 4]
    assert convolutions and all(
        p.is_contiguous(memory_format=torch.channels_last) for p in convolutions
    )

    def input_gradient() -> np.ndarray:
        x = torch.from_numpy(probe[:1].copy()).requires_grad_(True)
        logits, _ = twin(x)
        (gradient,) = torch.autograd.grad(logits[0].max(), x)
        return gradient.numpy()

    channels_last = input_gradient()
    try:
        twin.to(memory_format=torch.contiguous_format)
        default = input_gradient()
    finally:
        twin.to(memory_format=torch.channels_last)

    np.testing.assert_allclose(channels_last, default, rtol=0, atol=1e-4 * np.abs(default).max())
