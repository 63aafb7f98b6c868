"""Faithfulness: deleting the pixels a method ranks first must hurt the model more than
deleting pixels in random order (deletion AUC, Petsiuk et al. 2018), on real test faces."""

from __future__ import annotations

import numpy as np
import pytest

from service.explain import EXPLAINERS, ModelHandle
from service.explain.faithfulness import area_under, deletion_auc, insertion_auc, pixel_order

from .test_methods import FAST_PARAMS
from .test_perturbation import _region_mask, _region_model

STEPS = 10


def test_area_under_a_curve():
    assert area_under(np.array([1.0, 1.0, 1.0])) == pytest.approx(1.0)
    assert area_under(np.array([1.0, 0.0])) == pytest.approx(0.5)


@pytest.mark.parametrize("levels", [2, 7, None])  # a binary map, a few levels, no ties
def test_pixel_order_is_value_then_the_seeds_random_order(levels: int | None) -> None:
    rng = np.random.default_rng(3)
    values = rng.random((40, 50))
    if levels is not None:
        values = np.floor(values * levels)
    for seed in (0, 1):
        definition = np.lexsort((np.random.default_rng(seed).random(values.size), -values.ravel()))
        np.testing.assert_array_equal(pixel_order(values, seed), definition)
    assert not np.array_equal(pixel_order(values, 0), pixel_order(values, 1)) or levels is None


def test_a_perfect_map_beats_its_reverse_on_a_known_model():
    perfect = _region_mask().astype(np.float32)
    x = np.repeat(4.0 * perfect[None], 3, axis=0)  # blurring it lowers the region's mean
    for auc, better in ((deletion_auc, np.less), (insertion_auc, np.greater)):
        good = auc(_region_model, x, perfect, 0, steps=STEPS)
        bad = auc(_region_model, x, 1.0 - perfect, 0, steps=STEPS)
        assert better(good, bad), auc.__name__


@pytest.mark.slow  # ~30 s: every method's map, then deletion curves, on the test faces
def test_every_method_deletes_faster_than_a_random_map(handle: ModelHandle, test_faces):
    rng = np.random.default_rng(0)
    scores: dict[str, list[float]] = {name: [] for name in [*EXPLAINERS, "random"]}
    for x, label, _ in test_faces:
        maps = {
            name: method(handle).attribute(x, target=label, **FAST_PARAMS[name]).values
            for name, method in EXPLAINERS.items()
        }
        maps["random"] = rng.random(x.shape[1:])
        for name, values in maps.items():
            scores[name].append(deletion_auc(handle.forward, x, values, label, steps=STEPS))
    means = {name: float(np.mean(values)) for name, values in scores.items()}
    worse = [name for name in EXPLAINERS if not means[name] < means["random"]]
    assert not worse, f"deletion AUC not below random's {means['random']:.3f}: {means}"
