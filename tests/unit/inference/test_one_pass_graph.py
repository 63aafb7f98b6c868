"""The one-pass explainer grafted onto the served graph, on the committed bundle and real test
faces: one run gives the served graph's own outputs and the explainer's values (exactly on the
FP32 graph, to quantisation on the INT8 one); what cannot be grafted says why, and the service
then runs the explainer on its own."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from PIL import Image
from scipy.stats import spearmanr

from service.bundle.checks import probe_batch
from service.bundle.format import INT8_FILE, ONE_PASS_FILE, ONNX_FILE, BundleMeta, read_meta
from service.bundle.preprocess import Preprocessor
from service.explain import ModelHandle
from service.explain.one_pass import FastShap
from service.inference import one_pass_load
from service.inference.one_pass_graph import GraftError, graft
from service.inference.one_pass_load import load_one_pass

VALUES = "values"


@pytest.fixture(scope="module")
def meta(default_bundle: Path) -> BundleMeta:
    return read_meta(default_bundle)


@pytest.fixture(scope="module")
def stages(meta: BundleMeta) -> list[str]:
    return [layer.name for layer in meta.layers]


@pytest.fixture(scope="module")
def faces(default_bundle: Path, celebs_root: Path, meta: BundleMeta) -> np.ndarray:
    """24 test-split faces, three of each person, as model inputs."""
    preprocess = Preprocessor(meta.input)
    split = json.loads((default_bundle / "split.json").read_text())
    chosen: dict[int, list[str]] = {}
    for relative, label in split["splits"]["test"]:
        if len(chosen.setdefault(label, [])) < 3:
            chosen[label].append(relative)
    photos = [celebs_root / relative for label in sorted(chosen) for relative in chosen[label]]
    return np.stack([preprocess(Image.open(photo).convert("RGB")) for photo in photos])


def session(graph: onnx.ModelProto | Path) -> ort.InferenceSession:
    source = str(graph) if isinstance(graph, Path) else graph.SerializeToString()
    return ort.InferenceSession(source, providers=["CPUExecutionProvider"])


def run(graph: onnx.ModelProto | Path, x: np.ndarray) -> dict[str, np.ndarray]:
    runner = session(graph)
    names = [output.name for output in runner.get_outputs()]
    return dict(zip(names, runner.run(names, {"input": x}), strict=True))


@pytest.fixture(scope="module")
def explainer(default_bundle: Path) -> onnx.ModelProto:
    return onnx.load(default_bundle / ONE_PASS_FILE)


@pytest.fixture(scope="module")
def alone(default_bundle: Path, faces: np.ndarray) -> np.ndarray:
    """The explainer's values run on its own, as the bundle ships it."""
    return run(default_bundle / ONE_PASS_FILE, faces)[VALUES]


def test_on_the_fp32_graph_one_run_gives_the_models_outputs_and_exactly_the_explainers_values(
    default_bundle: Path, explainer, stages, faces, alone
) -> None:
    fused = graft(onnx.load(default_bundle / ONNX_FILE), explainer, VALUES, stages)
    onnx.checker.check_model(fused)
    outputs = run(fused, faces)
    served = run(default_bundle / ONNX_FILE, faces)

    assert list(outputs) == ["logits", "embedding", VALUES]
    np.testing.assert_array_equal(outputs["logits"], served["logits"])
    np.testing.assert_array_equal(outputs["embedding"], served["embedding"])
    np.testing.assert_allclose(outputs[VALUES], alone, rtol=0, atol=1e-6 * np.abs(alone).max())
    # the heads read the model's activations: none of the explainer's own trunk is copied
    copied = [node.name for node in fused.graph.node if node.name.startswith("one_pass/")]
    assert copied and not any("/trunk/stages." in name for name in copied)


def test_on_the_int8_graph_the_maps_rank_the_cells_as_the_explainer_does(
    default_bundle: Path, explainer, stages, faces, alone
) -> None:
    fused = graft(onnx.load(default_bundle / INT8_FILE), explainer, VALUES, stages)
    outputs = run(fused, faces)
    served = run(default_bundle / INT8_FILE, faces)

    np.testing.assert_allclose(outputs["logits"], served["logits"], rtol=0, atol=1e-5)
    labels = outputs["logits"].argmax(axis=1)
    rhos = []
    for values, own, label in zip(outputs[VALUES], alone, labels, strict=True):
        # the map fastshap draws: the class's cells minus every class's mean
        mine, theirs = values[label] - values.mean(0), own[label] - own.mean(0)
        rhos.append(spearmanr(mine.ravel(), theirs.ravel())[0])
    assert np.median(rhos) >= 0.99 and min(rhos) >= 0.95, rhos
    # quantised, not the FP32 values: the heads read the INT8 graph's activations
    assert not np.allclose(outputs[VALUES], alone, atol=1e-4)


def test_what_cannot_be_grafted_says_why(default_bundle: Path, explainer, stages) -> None:
    model = onnx.load(default_bundle / ONNX_FILE)
    with pytest.raises(GraftError, match="no counterpart in the served graph"):
        graft(model, explainer, VALUES, ["a", "b", "c", "d", "e", "f"])
    with pytest.raises(GraftError, match="stage 5 is not among the model's 4"):
        graft(model, explainer, VALUES, stages[:4])
    with pytest.raises(GraftError, match="no output 'shapley'"):
        graft(model, explainer, "shapley", stages)
    newer = onnx.ModelProto()
    newer.CopyFrom(explainer)
    newer.opset_import[0].version += 1
    with pytest.raises(GraftError, match="opset 18, the served graph 17"):
        graft(model, newer, VALUES, stages)


# -- as the service loads it --------------------------------------------------------------------


@pytest.fixture(scope="module")
def forward(default_bundle: Path) -> Callable[[np.ndarray], np.ndarray]:
    runner = session(default_bundle / ONNX_FILE)
    return lambda batch: runner.run(["logits"], {"input": batch})[0]


@pytest.fixture(scope="module")
def probe(meta: BundleMeta) -> np.ndarray:
    return probe_batch(Preprocessor(meta.input))


def test_loaded_grafted_fastshap_needs_no_other_prediction_and_draws_the_same_map(
    default_bundle: Path, meta, forward, probe, faces
) -> None:
    grafted = load_one_pass(default_bundle, meta, forward, probe, threads=1, served=ONNX_FILE)
    own = load_one_pass(default_bundle, meta, forward, probe, threads=1)
    assert grafted is not None and own is not None
    assert grafted.predict is not None and own.predict is None
    assert grafted.how.startswith(f"grafted onto {ONNX_FILE}") and own.how.endswith("on its own")
    queued = []

    def forward_soon(batch: np.ndarray):  # the batcher: a grafted map must not need it
        queued.append(len(batch))
        raise AssertionError("the prediction was queued on the model")

    for x in faces[:3]:
        handle = ModelHandle(forward, one_pass=grafted, forward_soon=forward_soon)
        mine = FastShap(handle).attribute(x)
        theirs = FastShap(ModelHandle(forward, one_pass=own)).attribute(x)
        assert handle.cancellation.passes == 1  # the one pass gave prediction and map
        assert mine.target == theirs.target
        np.testing.assert_allclose(mine.logits, forward(x[None])[0], atol=1e-5)
        np.testing.assert_allclose(mine.values, theirs.values, atol=1e-4)
    assert queued == []


def test_a_graft_that_disagrees_runs_the_explainer_on_its_own_and_says_why(
    default_bundle: Path, meta, forward, probe, monkeypatch
) -> None:
    monkeypatch.setattr(one_pass_load, "GRAFT_AGREEMENT", 1.01)  # nothing agrees this well
    loaded = load_one_pass(default_bundle, meta, forward, probe, threads=1, served=ONNX_FILE)

    assert loaded is not None and loaded.predict is None
    assert "on its own" in loaded.how and "below 1.01" in loaded.how
    np.testing.assert_allclose(loaded.baseline_logits, forward(np.zeros_like(probe[:1]))[0])
