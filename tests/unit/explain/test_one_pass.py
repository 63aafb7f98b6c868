"""The fastshap method on real test faces, with a one-pass explainer fitted to the default
bundle's model (``tests.one_pass_explainer``)."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
import pytest
import torch

from service.errors import OpenSetUnavailable
from service.explain import ModelHandle
from service.explain.objective import Question
from service.explain.one_pass import FastShap, OnePassModel, efficient, upsampled
from tests.one_pass_explainer import as_one_pass, small_explainer


@pytest.fixture(scope="module")
def one_pass(default_bundle: Path, celebs_root: Path) -> OnePassModel:
    return as_one_pass(*small_explainer(default_bundle, celebs_root))


@pytest.fixture(scope="module")
def with_one_pass(handle: ModelHandle, one_pass: OnePassModel) -> ModelHandle:
    return dataclasses.replace(handle, one_pass=one_pass)


def test_efficient_values_add_up_to_the_gain_in_numpy_and_torch() -> None:
    rng = np.random.default_rng(0)
    raw, gain = rng.normal(size=(3, 8, 64)), rng.normal(size=(3, 8))
    values = efficient(raw, gain)
    np.testing.assert_allclose(values.sum(-1), gain, atol=1e-12)
    # an equal share per cell: the differences between cells are the raw ones
    np.testing.assert_allclose(np.diff(values, axis=-1), np.diff(raw, axis=-1), atol=1e-12)
    as_torch = efficient(torch.from_numpy(raw), torch.from_numpy(gain)).numpy()
    np.testing.assert_allclose(as_torch, values, atol=1e-12)


def test_fastshap_is_a_one_pass_method_without_the_open_set() -> None:
    assert FastShap.needs_one_pass and not FastShap.needs_twin and FastShap.signed
    assert FastShap.planned_passes(FastShap.Params(), (150, 150)) == 2


def test_the_cells_add_up_to_each_logits_change_from_the_hidden_face(
    with_one_pass: ModelHandle, one_pass: OnePassModel, test_faces: list
) -> None:
    for x, _, _ in test_faces[:3]:
        logits = with_one_pass.forward(x[None])[0].astype(np.float64)
        gain = logits - one_pass.baseline_logits
        values = efficient(
            one_pass.run(x[None])[0].reshape(len(logits), -1).astype(np.float64), gain
        )
        np.testing.assert_allclose(values.sum(-1), gain, rtol=1e-5, atol=1e-4)
        assert np.ptp(values[int(np.argmax(logits))]) > 0  # not an even spread


def test_a_map_is_its_classs_centred_cells_laid_on_the_input(
    with_one_pass: ModelHandle, one_pass: OnePassModel, face: tuple[np.ndarray, int]
) -> None:
    x, label = face
    heatmap = FastShap(with_one_pass).attribute(x, target=label)
    logits = with_one_pass.forward(x[None])[0].astype(np.float64)
    values = efficient(
        one_pass.run(x[None])[0].reshape(len(logits), -1).astype(np.float64),
        logits - one_pass.baseline_logits,
    )
    cells = (values[label] - values.mean(axis=0)).reshape(one_pass.grid, one_pass.grid)
    expected = upsampled(cells, x.shape[1:])
    np.testing.assert_allclose(heatmap.values * heatmap.scale, expected, rtol=1e-4, atol=1e-5)
    assert heatmap.signed and heatmap.value_range == (-1.0, 1.0)
    assert heatmap.values.min() < 0 < heatmap.values.max()
    # centred: what moves every class's logit alike is no class's, so the maps cancel out
    every = [FastShap(with_one_pass).attribute(x, target=c) for c in range(len(logits))]
    np.testing.assert_allclose(sum(m.values * m.scale for m in every), 0.0, atol=1e-4)


def test_a_contrast_is_exactly_the_difference_of_the_two_class_maps(
    with_one_pass: ModelHandle, face: tuple[np.ndarray, int]
) -> None:
    x, label = face
    other = (label + 1) % 8
    maps = {
        key: FastShap(with_one_pass).attribute(x, target=question)
        for key, question in {
            "p": Question(label),
            "q": Question(other),
            "pq": Question(label, other),
            "qp": Question(other, label),
        }.items()
    }
    raw = {key: m.values * m.scale for key, m in maps.items()}
    np.testing.assert_allclose(raw["pq"], raw["p"] - raw["q"], atol=1e-5)
    np.testing.assert_allclose(raw["qp"], -raw["pq"], atol=1e-6)
    assert maps["pq"].explains.kind == "contrast"


def test_the_same_face_gets_the_same_map(
    with_one_pass: ModelHandle, face: tuple[np.ndarray, int]
) -> None:
    x, _ = face
    first = FastShap(with_one_pass).attribute(x)
    second = FastShap(with_one_pass).attribute(x.copy())
    np.testing.assert_array_equal(first.values, second.values)


def test_without_the_explainer_the_method_is_unavailable(
    handle: ModelHandle, face: tuple[np.ndarray, int]
) -> None:
    x, _ = face
    without = dataclasses.replace(handle, one_pass=None)
    with pytest.raises(ValueError, match="training one-pass"):
        FastShap(without).attribute(x)


def test_the_open_set_score_is_refused(
    with_one_pass: ModelHandle, face: tuple[np.ndarray, int]
) -> None:
    x, _ = face
    with pytest.raises(OpenSetUnavailable, match="class logits"):
        FastShap(with_one_pass).attribute(x, target=Question(open_set=True))
