"""The ``precision`` setting: which ONNX graph serves, its load-time check, and its errors."""

from __future__ import annotations

import dataclasses
import json
import subprocess
import sys
from pathlib import Path

import pytest
from pydantic import ValidationError

from service.bundle.checks import check_parity, load_twin, probe_batch, served_graph
from service.bundle.format import INT8_FILE, ONNX_FILE, BundleError, BundleMeta, read_meta
from service.bundle.preprocess import Preprocessor
from service.inference.engine import create_session
from service.inference.model import load_model
from service.settings import Settings


@pytest.fixture(scope="module")
def meta(default_bundle: Path) -> BundleMeta:
    return read_meta(default_bundle)


def _with_precision(meta: BundleMeta, precision: dict | None) -> BundleMeta:
    raw = meta.model_dump(mode="json")
    raw.pop("precision")
    if precision is not None:
        raw["precision"] = precision
    return BundleMeta.model_validate(raw)


def test_the_committed_bundle_offers_int8_with_its_gates(meta):
    int8 = meta.precision.int8

    assert int8 is not None and int8.file == INT8_FILE
    assert INT8_FILE in meta.files
    assert int8.gates["label_agreement"] >= int8.gates["limits"]["min_label_agreement"]
    assert int8.passed is True


@pytest.mark.parametrize(
    ("setting", "served"), [("fp32", ONNX_FILE), ("int8", INT8_FILE), ("auto", INT8_FILE)]
)
def test_the_setting_chooses_the_graph(meta, setting, served):
    graph = served_graph(meta, setting)

    assert graph.file == served
    assert graph.labels_must_agree is (served == INT8_FILE)
    expected = meta.precision.int8.parity.tolerance if served == INT8_FILE else 1e-4
    assert graph.tolerance == expected


def test_auto_serves_fp32_when_the_int8_gates_failed(meta):
    failed = meta.precision.int8.model_dump(mode="json")
    failed["gates"] = {**failed["gates"], "passed": False}

    assert served_graph(_with_precision(meta, {"int8": failed}), "auto").file == ONNX_FILE
    assert served_graph(_with_precision(meta, {"int8": failed}), "int8").file == INT8_FILE


def test_int8_on_a_bundle_without_it_is_a_clear_error(meta):
    plain = _with_precision(meta, None)

    assert served_graph(plain, "auto").file == ONNX_FILE
    with pytest.raises(BundleError, match="no INT8 model .* 'python -m training quantize"):
        served_graph(plain, "int8")


def test_a_precision_block_naming_an_unlisted_file_is_rejected(default_bundle, tmp_path):
    raw = json.loads((default_bundle / "meta.json").read_text())
    raw["files"].pop(INT8_FILE)
    bundle = tmp_path / "bundle"
    bundle.mkdir()
    (bundle / "meta.json").write_text(json.dumps(raw))

    with pytest.raises(BundleError, match="does not list the INT8 model"):
        read_meta(bundle)


def test_int8_parity_needs_the_same_labels_and_the_stated_tolerance(default_bundle, meta):
    graph = served_graph(meta, "int8")
    session = create_session(default_bundle / INT8_FILE, "cpu", threads=2)
    forward = lambda x: session.run(["logits"], {"input": x})[0]  # noqa: E731
    twin, probe = load_twin(default_bundle), probe_batch(Preprocessor(meta.input))

    assert check_parity(meta, forward, twin, probe, graph) <= graph.tolerance
    with pytest.raises(BundleError, match="disagree"):  # the FP32 tolerance is too tight
        check_parity(meta, forward, twin, probe)
    loose = dataclasses.replace(graph, tolerance=100.0)  # only the labels can fail now
    with pytest.raises(BundleError, match="different labels"):
        check_parity(meta, lambda x: forward(x)[:, ::-1].copy(), twin, probe, loose)


def test_load_model_serves_int8_and_says_so(default_bundle, meta):
    model = load_model(Settings(_env_file=None, model=default_bundle, precision="int8", threads=2))

    assert (model.report.precision, model.report.onnx_file) == ("int8", INT8_FILE)
    assert model.report.parity_tolerance == meta.precision.int8.parity.tolerance
    assert model.report.parity_max_abs_diff <= model.report.parity_tolerance
    assert model.engine.has_embedding  # the open-set score still gets its embedding


def test_a_bad_precision_setting_is_a_clear_error(monkeypatch):
    with pytest.raises(ValidationError, match="'fp32', 'int8' or 'auto'"):
        Settings(_env_file=None, precision="fp16")
    cli = subprocess.run(
        [sys.executable, "-m", "service", "--precision", "fp16"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert cli.returncode == 2
    assert "invalid choice: 'fp16'" in cli.stderr
