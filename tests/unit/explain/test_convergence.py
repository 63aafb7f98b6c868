"""Sampling that stops when the map has converged (``stop=converged``): the stopping tests, and
every sampling method on a real face and the real bundle: never beyond its budget, the same map
and the same stop for the same input, the map of the samples it used, the whole budget with
``stop=fixed``."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
from captum.attr import IntegratedGradients as CaptumIntegratedGradients
from pydantic import ValidationError

from service.common.cancellation import Cancellation
from service.common.twin import input_gradients
from service.explain import EXPLAINERS, ModelHandle
from service.explain import integrated_gradients as ig_module
from service.explain import lime as lime_module
from service.explain import occlusion as occlusion_module
from service.explain import rise as rise_module
from service.explain import smoothgrad as smoothgrad_module
from service.explain.convergence import SplitHalf, changed_less_than, parity_halves
from service.explain.objective import Objective
from service.explain.twin import as_batch, score_head

# Budgets of several batches, cheap enough for the fast tier.
BUDGETS = {
    "lime": {"num_samples": 128, "num_segments": 20, "batch_size": 16},
    "rise": {"num_masks": 128, "batch_size": 16},
    "smoothgrad": {"samples": 12, "batch_size": 4},
    "integrated_gradients": {"steps": 16, "batch_size": 4},
    "occlusion": {"window": 24, "stride": 12, "batch_size": 8},
}
RULES = {
    "lime": lime_module,
    "rise": rise_module,
    "smoothgrad": smoothgrad_module,
    "integrated_gradients": ig_module,
}


class Counting:
    """A ``ModelHandle`` that counts forward passes: the ONNX function's calls and the twin's
    passes (each goes through the cancellation's ``batch``)."""

    def __init__(self, handle: ModelHandle) -> None:
        self.passes = 0

        def forward(batch: np.ndarray) -> np.ndarray:
            self.count()
            return handle.forward(batch)

        self.handle = dataclasses.replace(
            handle, forward=forward, cancellation=Cancellation(on_batch=self.count)
        )

    def count(self) -> None:
        self.passes += 1


def test_split_half_predicts_the_agreement_of_full_size_maps() -> None:
    rule = SplitHalf(agreement=0.9, min_samples=8)
    rng = np.random.default_rng(0)
    signal = rng.random(400)
    noisy = [signal + 0.3 * rng.standard_normal(400) for _ in range(2)]

    r, full = rule.predicted(*noisy)

    assert 0 < r < full < 1
    assert full == pytest.approx(2 * r / (1 + r))
    assert rule.predicted(signal, -signal) == pytest.approx((-1.0, -1.0))  # not stretched
    assert rule.reached(8, signal, signal) == (True, pytest.approx(1.0))
    assert rule.reached(7, signal, signal)[0] is False  # too few samples yet
    assert rule.reached(64, signal, rng.random(400))[0] is False  # halves unrelated


def test_parity_halves_deal_samples_alternately_across_batches() -> None:
    seen: list[list[int]] = [[], []]
    for start, stop in ((0, 3), (3, 8), (8, 9)):
        for side, part in enumerate(parity_halves(start, stop)):
            seen[side] += [start + i for i in range(stop - start)[part]]
    assert seen == [[0, 2, 4, 6, 8], [1, 3, 5, 7]]


def test_the_change_test_is_relative_to_the_map() -> None:
    reference = np.array([[0.0, 2.0], [-4.0, 1.0]])
    assert changed_less_than(np.array([0.1, -0.19]), reference, 0.05)
    assert not changed_less_than(np.array([0.1, -0.2]), reference, 0.05)
    assert not changed_less_than(np.array([1e-9]), np.zeros(3), 0.05)  # a flat map: any change


@pytest.mark.parametrize("method", list(BUDGETS))
def test_converged_stays_within_the_budget_and_repeats_itself(
    handle: ModelHandle, face: tuple[np.ndarray, int], method: str
) -> None:
    x, _ = face
    explainer = EXPLAINERS[method]
    params = explainer.Params(**BUDGETS[method], stop="converged")
    counting = Counting(handle)

    first = explainer(counting.handle).run(x, None, params)
    second = explainer(handle).run(x, None, params)

    assert first.sampling is not None and first.sampling.stop == "converged"
    assert first.sampling.used <= first.sampling.planned
    assert counting.passes <= explainer.planned_passes(params, x.shape[1:])
    np.testing.assert_array_equal(first.values, second.values)
    assert second.sampling == first.sampling


@pytest.mark.parametrize("method", list(BUDGETS))
def test_fixed_uses_the_whole_budget(
    handle: ModelHandle, face: tuple[np.ndarray, int], method: str
) -> None:
    x, _ = face
    explainer = EXPLAINERS[method]
    params = explainer.Params(**BUDGETS[method], stop="fixed")
    counting = Counting(handle)

    heatmap = explainer(counting.handle).run(x, None, params)

    assert heatmap.sampling is not None
    assert heatmap.sampling.used == heatmap.sampling.planned
    assert counting.passes == explainer.planned_passes(params, x.shape[1:])


@pytest.mark.parametrize("method", list(RULES))
def test_a_rule_that_holds_at_once_stops_at_its_minimum_and_one_that_never_holds_runs_out(
    handle: ModelHandle, face: tuple[np.ndarray, int], method: str, monkeypatch
) -> None:
    x, _ = face
    explainer = EXPLAINERS[method]
    params = explainer.Params(**BUDGETS[method], stop="converged")
    batch = params.batch_size  # type: ignore[attr-defined]

    monkeypatch.setattr(RULES[method], "CONVERGENCE", SplitHalf(-1.0, 2 * batch))
    counting = Counting(handle)
    early = explainer(counting.handle).run(x, None, params)
    monkeypatch.setattr(RULES[method], "CONVERGENCE", SplitHalf(1.01, 2 * batch))
    late = explainer(handle).run(x, None, params)

    assert early.sampling is not None and late.sampling is not None
    assert early.sampling.used == 2 * batch  # two batches, then the rule held
    assert counting.passes == 1 + 2  # the prediction, then two batches
    assert late.sampling.used == late.sampling.planned
    assert "split_half_agreement" in early.signals


def test_smoothgrad_stopped_early_is_the_map_of_the_copies_it_used(
    handle: ModelHandle, face: tuple[np.ndarray, int], monkeypatch
) -> None:
    x, _ = face
    monkeypatch.setattr(smoothgrad_module, "CONVERGENCE", SplitHalf(-1.0, 4))
    explainer = EXPLAINERS["smoothgrad"]

    stopped = explainer(handle).attribute(x, samples=12, batch_size=4, stop="converged")
    four = explainer(handle).attribute(x, samples=4, batch_size=4, stop="fixed")

    assert stopped.sampling is not None and stopped.sampling.used == 4
    np.testing.assert_allclose(stopped.values, four.values, atol=1e-5)


def test_converged_integrated_gradients_run_to_the_end_are_the_midpoint_rule(
    handle: ModelHandle, face: tuple[np.ndarray, int], monkeypatch
) -> None:
    x, label = face
    monkeypatch.setattr(ig_module, "CONVERGENCE", SplitHalf(1.01, 4))
    steps = 12

    heatmap = EXPLAINERS["integrated_gradients"](handle).attribute(
        x, label, steps=steps, batch_size=5, stop="converged", baseline="zero"
    )
    with input_gradients(handle.twin, None, score_head(Objective("class", label))) as logits:
        reference = CaptumIntegratedGradients(logits).attribute(
            as_batch(x), target=0, n_steps=steps, method="riemann_middle"
        )
    raw = reference.detach().sum(dim=1)[0].numpy()

    assert ig_module.interleaved(steps).tolist() == [0, 8, 4, 2, 10, 6, 1, 9, 5, 3, 11, 7]
    np.testing.assert_allclose(heatmap.values * heatmap.scale, raw, atol=1e-4 * np.abs(raw).max())


def test_integrated_gradients_refuse_a_quadrature_with_converged() -> None:
    params = EXPLAINERS["integrated_gradients"].Params
    with pytest.raises(ValidationError, match="quadrature applies to stop=fixed"):
        params(stop="converged", quadrature="riemann_trapezoid")
    assert params(stop="fixed", quadrature="riemann_trapezoid").quadrature == "riemann_trapezoid"


def test_occlusion_refines_until_a_batch_changes_little(
    handle: ModelHandle, face: tuple[np.ndarray, int], monkeypatch
) -> None:
    x, label = face
    occlusion = EXPLAINERS["occlusion"]
    params = {"window": 24, "stride": 12, "batch_size": 4, "refine": 0.3}

    fixed = occlusion(handle).attribute(x, label, **params, stop="fixed")
    monkeypatch.setattr(occlusion_module, "REFINE_TOLERANCE", 0.0)  # every batch changes it
    exhausted = occlusion(handle).attribute(x, label, **params, stop="converged")
    monkeypatch.setattr(occlusion_module, "REFINE_TOLERANCE", 10.0)  # no batch changes it
    first_batch = occlusion(handle).attribute(x, label, **params, stop="converged")

    assert fixed.sampling == dataclasses.replace(exhausted.sampling, stop="fixed")  # type: ignore[arg-type]
    np.testing.assert_allclose(exhausted.values, fixed.values, atol=1e-5)
    assert first_batch.sampling is not None and fixed.sampling is not None
    assert first_batch.sampling.used == 49 + 4  # the 7 x 7 coarse grid, one refined batch
    assert fixed.sampling.used == fixed.sampling.planned == 49 + 29  # ceil(0.3 * 95)
