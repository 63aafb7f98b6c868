"""Negligible maps: numerical noise is flagged and left unscaled, never stretched to full
strength; real faces are never flagged."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from service.bundle.preprocess import Preprocessor
from service.explain import EXPLAINERS, ModelHandle
from service.explain.heatmap import NEGLIGIBLE_SCALE, scaled
from service.render.png import colorize

PERTURBATION_AND_PATH_METHODS = ("integrated_gradients", "occlusion", "lime")


def test_scaled_stretches_evidence_and_leaves_noise_alone():
    rng = np.random.default_rng(0)
    noise = rng.normal(0.0, 1e-7, (150, 150))
    values, scale, negligible = scaled(noise, (-1.0, 1.0))
    assert negligible and scale == pytest.approx(np.abs(noise).max())
    np.testing.assert_allclose(values, noise, atol=1e-12)  # raw, not divided by the scale

    evidence = noise * 1e5  # largest magnitude ~5e-2: a real map's scale
    values, scale, negligible = scaled(evidence, (-1.0, 1.0))
    assert not negligible and np.abs(values).max() == pytest.approx(1.0)


def test_the_threshold_is_the_boundary():
    below = np.full((4, 4), NEGLIGIBLE_SCALE * 0.99)
    at = np.full((4, 4), NEGLIGIBLE_SCALE)
    assert scaled(below, (0.0, 1.0))[2]
    assert not scaled(at, (0.0, 1.0))[2]
    assert scaled(np.zeros((4, 4)), (0.0, 1.0))[2]  # an all-zero map holds no evidence either


def test_a_negligible_map_is_drawn_fully_transparent():
    values, _, negligible = scaled(np.full((8, 8), NEGLIGIBLE_SCALE * 0.99), (-1.0, 1.0))
    assert negligible
    assert not colorize(values, signed=True, opacity=1.0)[..., 3].any()


@pytest.mark.parametrize("colour", [(0, 0, 0), (255, 255, 255)], ids=["black", "white"])
@pytest.mark.parametrize("method", PERTURBATION_AND_PATH_METHODS)
def test_flat_image_against_its_own_mean_is_negligible(
    handle: ModelHandle, preprocess: Preprocessor, method: str, colour: tuple[int, int, int]
):
    """Every perturbation replaces the image by itself: what is left of the scores is rounding
    (about 1e-7 with the real bundle), which used to be stretched into a confident map."""
    x = preprocess(Image.new("RGB", (150, 150), colour))
    heatmap = EXPLAINERS[method](handle).attribute(x, baseline="mean")
    assert heatmap.negligible
    assert heatmap.scale < NEGLIGIBLE_SCALE
    assert np.abs(heatmap.values).max() < NEGLIGIBLE_SCALE  # not stretched to [-1, 1]


# LIME and RISE at their defaults cost ~10 s each on 4 faces: those two are slow
SLOW_ON_FACES = ("lime", "rise")


@pytest.mark.parametrize(
    "method",
    [pytest.param(m, marks=pytest.mark.slow) if m in SLOW_ON_FACES else m for m in EXPLAINERS],
)
def test_real_faces_are_not_negligible(
    handle: ModelHandle, test_faces: list[tuple[np.ndarray, int, Image.Image]], method: str
):
    for x, label, _ in test_faces[:4]:  # one per class for half the classes: keeps it quick
        heatmap = EXPLAINERS[method](handle).attribute(x, target=label)
        assert not heatmap.negligible, (method, label, heatmap.scale)
        assert heatmap.scale > 100 * NEGLIGIBLE_SCALE  # far from the threshold, not just above
        assert np.abs(heatmap.values).max() == pytest.approx(1.0, abs=1e-6)
