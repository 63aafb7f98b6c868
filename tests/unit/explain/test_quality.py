"""The quality report (service/explain/quality.py): the rule, the curves, the signals."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from captum.attr import NoiseTunnel, Saliency

from service.common.softmax import softmax
from service.common.twin import input_gradients
from service.explain import EXPLAINERS, ModelHandle
from service.explain.faithfulness import area_under
from service.explain.lime import surrogate_signals
from service.explain.quality import (
    PASSES,
    REPEAT_PASSES,
    STEPS,
    Completeness,
    gain_of,
    grade,
    verdict_of,
)
from service.explain.twin import as_batch, channel_max_abs

GOOD = {"strong_deletion": 0.4, "strong_insertion": 1.5}


def counting(handle: ModelHandle) -> tuple[ModelHandle, list[int]]:
    """``handle`` whose forward passes are counted (the sizes of the batches)."""
    sizes: list[int] = []

    def forward(batch: np.ndarray) -> np.ndarray:
        sizes.append(len(batch))
        return handle.forward(batch)

    return ModelHandle(forward, handle.twin, handle.gradcam_layer), sizes


@pytest.fixture(scope="module")
def occlusion_face(handle, test_faces):
    """A test face with its occlusion map for its predicted class, and its logits."""
    x = test_faces[7][0]
    logits = handle.forward(x[None])[0]
    target = int(np.argmax(logits))
    heatmap = EXPLAINERS["occlusion"](handle).attribute(x, target)
    return x, target, logits, heatmap.values


# -- the rule --------------------------------------------------------------------------------


def test_the_gain_is_the_mean_of_both_curves_gains_over_random() -> None:
    assert gain_of(0.5, 2.0) == pytest.approx(0.75)
    assert gain_of(1.0, 1.0) == 0.0  # a random map
    assert gain_of(0.6, 0.9) == pytest.approx(0.15)
    assert gain_of(0.6, 0.5, insertion_span=0.05) == pytest.approx(0.4)  # deletion alone
    assert gain_of(None, 1.5) is None


def test_a_map_well_ahead_of_random_on_both_curves_is_strong() -> None:
    verdict, reasons = verdict_of(0.4, 1.5, span=0.8, signals={})
    assert verdict == "strong" and reasons[0].startswith("gain 0.55 over a random map")


@pytest.mark.parametrize(
    ("deletion", "insertion", "why"),
    [
        (0.95, 1.05, "gain 0.05 < 0.15"),  # a shuffled map: about as good as random
        (1.3, 0.7, "gain -0.30 < 0.15"),  # an inverted map
        (None, 1.5, "gain n/a"),
    ],
)
def test_a_map_not_clearly_better_than_random_is_unreliable(
    deletion: float | None, insertion: float, why: str
) -> None:
    verdict, reasons = verdict_of(deletion, insertion, span=0.8, signals={})
    assert verdict == "unreliable"
    assert any(reason.startswith(why) for reason in reasons), reasons


def test_between_the_gains_or_worse_than_random_on_one_curve_is_weak() -> None:
    verdict, reasons = verdict_of(0.7, 1.2, span=0.8, signals={})
    assert verdict == "weak" and reasons == ("gain 0.25 < 0.4",)
    # deletion far ahead, insertion behind: a good gain, but one curve no better than random
    verdict, reasons = verdict_of(0.1, 0.97, span=0.8, signals={})
    assert verdict == "weak" and reasons == ("insertion ratio 0.97: no better than a random map",)


def test_a_negligible_map_or_a_face_whose_deletion_moves_nothing_is_unreliable() -> None:
    assert verdict_of(0.4, 1.5, span=0.8, signals={}, negligible=True)[0] == "unreliable"
    verdict, reasons = verdict_of(0.4, 1.5, span=0.05, signals={})
    assert verdict == "unreliable" and "cannot tell this map from noise" in reasons[0]


def test_where_the_blurred_face_keeps_the_prediction_insertion_is_not_held_against_it() -> None:
    verdict, reasons = verdict_of(0.4, 0.9, span=0.8, signals={}, insertion_span=0.02)
    assert verdict == "weak"
    assert reasons == (
        "the blurred face is within 0.1 of the photo's probability (0.020): the insertion test "
        "cannot measure this map",
    )
    # where insertion does measure, the same ratios are not clearly better than random
    assert verdict_of(0.4, 0.9, span=0.8, signals={}, insertion_span=0.5)[0] == "weak"
    assert verdict_of(0.8, 0.9, span=0.8, signals={}, insertion_span=0.5)[0] == "unreliable"


@pytest.mark.parametrize(
    ("signals", "verdict"),
    [
        ({"split_half_agreement": 0.9, "surrogate_r2": 0.6}, "strong"),
        ({"split_half_agreement": 0.3}, "weak"),
        ({"split_half_agreement": 0.1}, "unreliable"),
        ({"completeness_gap": 0.5}, "weak"),
        ({"completeness_gap": 0.1}, "strong"),
        ({"surrogate_r2": 0.05}, "weak"),
    ],
)
def test_the_methods_own_signals_bound_the_verdict(signals: dict, verdict: str) -> None:
    assert verdict_of(0.4, 1.5, span=0.8, signals=signals)[0] == verdict


# -- the curves ------------------------------------------------------------------------------


def test_the_report_is_the_areas_of_the_curves_it_describes(handle, occlusion_face) -> None:
    x, target, logits, values = occlusion_face
    report, random = grade(handle.forward, x, values, target, logits)

    photo = softmax(logits[None])[0, target]
    assert report.probability == pytest.approx(photo)
    assert len(random.deletion) == len(random.insertion) == STEPS + 1
    assert random.deletion[0] == random.insertion[-1] == pytest.approx(photo)
    assert report.random_deletion_auc == pytest.approx(area_under(random.deletion))
    assert report.deletion_ratio == pytest.approx(report.deletion_auc / report.random_deletion_auc)
    assert report.insertion_ratio == pytest.approx(
        report.insertion_auc / report.random_insertion_auc
    )
    # the deletion curve ends where every pixel is the deletion baseline: model input 0
    deleted = softmax(handle.forward(np.zeros_like(x)[None]))[0, target]
    assert report.deleted_probability == pytest.approx(deleted, abs=1e-5)


def test_a_good_map_beats_its_inversion_and_a_shuffle_of_it(handle, occlusion_face) -> None:
    x, target, logits, values = occlusion_face
    good, random = grade(handle.forward, x, values, target, logits)
    inverted, _ = grade(handle.forward, x, -values, target, logits, random=random)
    shuffled_values = np.random.default_rng(1).permutation(values.ravel()).reshape(values.shape)
    shuffled, _ = grade(handle.forward, x, shuffled_values, target, logits, random=random)

    assert good.verdict == "strong", good.reasons
    assert inverted.verdict == shuffled.verdict == "unreliable"
    assert good.gain >= 0.4 and inverted.gain < 0 and abs(shuffled.gain) < 0.15
    assert good.deletion_ratio < 1.0 < inverted.deletion_ratio
    assert good.insertion_ratio > 1.0 > inverted.insertion_ratio


def test_the_random_curves_are_computed_once_per_face(handle, occlusion_face) -> None:
    x, target, logits, values = occlusion_face
    counted, sizes = counting(handle)
    first, random = grade(counted.forward, x, values, target, logits)
    assert len(sizes) == PASSES
    sizes.clear()
    again, _ = grade(counted.forward, x, values, target, logits, random=random)
    assert len(sizes) == REPEAT_PASSES and sizes == [2 * (STEPS - 1)]
    assert again == first  # the same map, face and target: the same report


def test_the_same_input_gets_the_same_report(handle, occlusion_face) -> None:
    x, target, logits, values = occlusion_face
    first, _ = grade(handle.forward, x, values, target, logits)
    second, _ = grade(handle.forward, x, values, target, logits)
    assert first == second


# -- the methods' own signals ----------------------------------------------------------------


def test_integrated_gradients_completeness_gap_is_small_and_catches_a_wrong_total(
    handle, occlusion_face
) -> None:
    x, target, logits, _ = occlusion_face
    method = EXPLAINERS["integrated_gradients"]
    params = method.Params(steps=64)
    heatmap = method(handle).run(x, target, params)
    total = float(heatmap.values.astype(np.float64).sum()) * heatmap.scale
    baseline = method.completeness_baseline(x, params)
    kept, _ = grade(
        handle.forward,
        x,
        heatmap.values,
        target,
        logits,
        completeness=Completeness(baseline, total),
    )
    doubled, _ = grade(
        handle.forward,
        x,
        heatmap.values,
        target,
        logits,
        completeness=Completeness(baseline, 2 * total),
    )
    assert kept.signals["completeness_gap"] < 0.1
    assert doubled.signals["completeness_gap"] > 0.8


def test_lime_surrogate_signals_tell_a_linear_score_from_noise() -> None:
    rng = np.random.default_rng(0)
    features = rng.integers(0, 2, size=(400, 12)).astype(np.float64)
    kernel = np.ones(400)
    linear = features @ np.linspace(-1, 1, 12) + 0.5
    noise = rng.random(400)

    fitted = surrogate_signals(features, linear, kernel)
    noisy = surrogate_signals(features, noise, kernel)

    assert fitted["surrogate_r2"] > 0.99 and fitted["split_half_agreement"] > 0.99
    assert noisy["surrogate_r2"] < 0.1 and noisy["split_half_agreement"] < 0.5


@pytest.mark.parametrize("method", ["lime", "rise", "smoothgrad"])
def test_sampling_methods_agree_with_themselves_more_with_more_samples(
    handle, face, method
) -> None:
    x, label = face
    few = {"lime": {"num_samples": 32}, "rise": {"num_masks": 32}, "smoothgrad": {"samples": 2}}
    many = {"lime": {"num_samples": 512}, "rise": {"num_masks": 512}, "smoothgrad": {"samples": 32}}
    low = EXPLAINERS[method](handle).attribute(x, label, **few[method]).signals
    high = EXPLAINERS[method](handle).attribute(x, label, **many[method]).signals
    assert set(high) == set(EXPLAINERS[method].signal_names)
    assert high["split_half_agreement"] > low["split_half_agreement"]


def test_smoothgrads_halves_leave_its_map_as_captum_computes_it(handle, face) -> None:
    x, label = face
    heatmap = EXPLAINERS["smoothgrad"](handle).attribute(x, label, samples=8, seed=3)
    stdev = 0.15 * float(x.max() - x.min())
    with torch.random.fork_rng(devices=[]), input_gradients(handle.twin) as logits_fn:
        torch.manual_seed(3)
        gradients = NoiseTunnel(Saliency(logits_fn)).attribute(
            as_batch(x),
            target=label,
            nt_type="smoothgrad",
            nt_samples=8,
            nt_samples_batch_size=8,
            stdevs=stdev,
            abs=True,
        )
    expected = channel_max_abs(gradients)
    np.testing.assert_allclose(heatmap.values, expected / expected.max(), rtol=1e-6)
