"""``python -m training quantize``: a static INT8 graph added to a bundle copy, with its gates.

One quantisation per module (about 20 s of CPU): the calibration, the gates and the throughput
figures run once, at the shipped options, on a copy of the committed bundle.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from service.bundle.checks import served_graph, sha256_of, verify_files
from service.bundle.format import INT8_FILE, read_meta
from service.bundle.preprocess import Preprocessor
from service.faces.aligned import whole_image
from training.__main__ import get_args_parser
from training.quantize import GATES, QuantOptions, quantize, session, summary

TEST_SAMPLE = 48  # service-preprocessed test crops for the independent agreement check


@pytest.fixture(scope="module")
def quantized(default_bundle: Path, data_root: Path, tmp_path_factory) -> tuple[Path, dict]:
    """A copy of the committed bundle without its INT8 graph, then quantised: (dir, block)."""
    bundle = tmp_path_factory.mktemp("quantize") / "celebs8"
    shutil.copytree(default_bundle, bundle, ignore=shutil.ignore_patterns(INT8_FILE))
    meta = json.loads((bundle / "meta.json").read_text())
    meta["files"].pop(INT8_FILE, None)
    meta.pop("precision", None)
    (bundle / "meta.json").write_text(json.dumps(meta))
    block = quantize(
        bundle, data=data_root / "celebs8", others=data_root / "others", threads=2, rounds=1
    )
    return bundle, block


@pytest.mark.training  # the quantized bundle of the module (~10 s)
def test_the_int8_file_is_listed_with_its_sha256_and_the_bundle_checks(quantized):
    bundle, block = quantized

    meta = read_meta(bundle)
    verify_files(bundle, meta)  # every listed file, the new one included

    assert meta.files[INT8_FILE].sha256 == sha256_of(bundle / INT8_FILE)
    assert meta.precision.int8 is not None
    assert meta.precision.int8.file == INT8_FILE
    assert meta.precision.int8.parity.tolerance == block["parity"]["tolerance"] > 0
    assert block["quantization"]["format"] == "qdq"
    assert block["quantization"]["reduce_range"] is True
    assert block["calibration"] == {"split": "train", "images": 128, "seed": 0}


@pytest.mark.training  # the quantized bundle of the module (~10 s)
def test_the_gates_are_measured_and_recorded(quantized):
    bundle, block = quantized
    gates = block["gates"]
    meta = json.loads((bundle / "meta.json").read_text())

    assert gates["images"] == 255
    assert gates["limits"] == GATES
    # the FP32 figures are the bundle's own: test accuracy, and the held-out open-set AUROC
    assert gates["accuracy_fp32"] == pytest.approx(meta["metrics"]["test"]["accuracy"], abs=1e-3)
    assert gates["accuracy_drop_points"] <= GATES["max_accuracy_drop_points"]
    assert gates["label_agreement"] >= GATES["min_label_agreement"]
    assert gates["open_set_unknown_images"] == 160
    held_out = meta["open_set"]["held_out"]["auroc"]
    assert gates["open_set_auroc_fp32"] == pytest.approx(held_out, abs=1e-3)
    assert gates["auroc_drop"] <= GATES["max_auroc_drop"]
    assert gates["probe_labels_agree"] is True
    assert gates["passed"] is True
    for precision in ("fp32", "int8"):
        assert block["throughput"][precision]["img_per_s_batch_32"] > 0
    assert "label agreement" in summary(block)


@pytest.mark.training  # the quantized bundle of the module (~10 s)
def test_int8_labels_agree_with_fp32_on_service_preprocessed_test_crops(quantized, data_root):
    bundle, _ = quantized
    meta = read_meta(bundle)
    split = json.loads((bundle / "split.json").read_text())
    rng = np.random.default_rng(7)
    tests = split["splits"]["test"]
    sample = [tests[i] for i in rng.choice(len(tests), TEST_SAMPLE, replace=False)]
    preprocess = Preprocessor(meta.input)
    crops = [Image.open(data_root / "celebs8" / rel).convert("RGB") for rel, _ in sample]
    x = np.stack([preprocess(whole_image(crop, meta.input.framing).crop) for crop in crops])
    fp32 = session(bundle / "model.onnx", 2).run(["logits"], {"input": x})[0]
    int8 = session(bundle / INT8_FILE, 2).run(["logits"], {"input": x})[0]

    assert (fp32.argmax(1) == int8.argmax(1)).all()
    assert np.abs(fp32 - int8).max() < 2.0  # 8-bit noise, not another model
    assert served_graph(meta, "auto").file == INT8_FILE  # gates passed: auto serves it


def test_unknown_options_fail_listing_the_valid_ones():
    with pytest.raises(ValueError, match="valid: qdq, qoperator"):
        QuantOptions(format="qint4")
    with pytest.raises(SystemExit):
        get_args_parser().parse_args(["quantize", "--activations", "u4"])
