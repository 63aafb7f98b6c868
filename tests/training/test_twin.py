"""``python -m training twin``: the bundle's twin re-exported with the embedding, nothing else
changed, and refused when the new twin would not be the old one."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest
import torch

from service.bundle.checks import load_twin, probe_batch, sha256_of, verify_files
from service.bundle.format import EMBEDDING_OUTPUT, read_meta
from service.bundle.preprocess import Preprocessor
from training.__main__ import main


@pytest.fixture()
def bundle_copy(default_bundle: Path, tmp_path: Path) -> Path:
    """meta.json, split.json, the twin and the top patches copied (writable), the other files
    linked."""
    copy = tmp_path / "celebs8"
    copy.mkdir()
    for name in ("model.onnx", "model.int8.onnx", "one_pass.onnx", "open_set", "report"):
        (copy / name).symlink_to(default_bundle / name)
    for name in ("meta.json", "split.json", "model.pt2"):
        shutil.copy(default_bundle / name, copy / name)
    shutil.copytree(default_bundle / "insight", copy / "insight")
    return copy


def test_the_committed_twin_returns_the_onnx_graphs_embedding(default_bundle: Path) -> None:
    meta = read_meta(default_bundle)
    probe = probe_batch(Preprocessor(meta.input))
    with torch.no_grad():
        logits, outputs = load_twin(default_bundle)(torch.from_numpy(probe))
    session = ort.InferenceSession(str(default_bundle / "model.onnx"))
    onnx_logits, embedding = session.run(["logits", EMBEDDING_OUTPUT], {"input": probe})

    assert outputs[EMBEDDING_OUTPUT].shape == (len(probe), meta.architecture["embedding_dim"])
    np.testing.assert_allclose(outputs[EMBEDDING_OUTPUT].numpy(), embedding, atol=1e-4)
    np.testing.assert_allclose(logits.numpy(), onnx_logits, atol=1e-4)


@pytest.mark.training
def test_the_command_rewrites_the_twin_and_the_top_patches_link_only(bundle_copy: Path) -> None:
    before = json.loads((bundle_copy / "meta.json").read_text())
    patches = bundle_copy / "insight/top_patches.json"
    index = json.loads(patches.read_text())
    index["model_sha256"] = before["files"]["model.pt2"]["sha256"]  # made by the old twin
    patches.write_text(json.dumps(index, separators=(",", ":")) + "\n")

    assert main(["twin", "--bundle", str(bundle_copy)]) == 0

    after = json.loads((bundle_copy / "meta.json").read_text())
    new_sha = sha256_of(bundle_copy / "model.pt2")
    assert after["files"]["model.pt2"]["sha256"] == new_sha
    assert {k for k in before if before[k] != after[k]} <= {"files"}
    relinked = json.loads(patches.read_text())
    assert relinked["model_sha256"] == new_sha
    assert {k: v for k, v in relinked.items() if k != "model_sha256"} == {
        k: v for k, v in index.items() if k != "model_sha256"
    }
    assert after["files"]["insight/top_patches.json"]["sha256"] == sha256_of(patches)
    unchanged = set(after["files"]) - {"model.pt2", "insight/top_patches.json"}
    assert {k: after["files"][k] for k in unchanged} == {k: before["files"][k] for k in unchanged}
    verify_files(bundle_copy, read_meta(bundle_copy))  # what the service checks at load


@pytest.mark.training
def test_a_twin_of_other_weights_is_refused_and_kept(bundle_copy: Path, caplog) -> None:
    meta = json.loads((bundle_copy / "meta.json").read_text())
    original = (bundle_copy / "model.pt2").read_bytes()
    # an ONNX graph whose embedding is not the twin's (the INT8 one's, within 1e-2, not 1e-4)
    (bundle_copy / "model.onnx").unlink()
    (bundle_copy / "model.onnx").symlink_to((bundle_copy / "model.int8.onnx").resolve())

    assert main(["twin", "--bundle", str(bundle_copy)]) == 2

    assert (bundle_copy / "model.pt2").read_bytes() == original
    assert json.loads((bundle_copy / "meta.json").read_text()) == meta
    assert "differs by" in caplog.text
