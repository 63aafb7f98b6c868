"""Occlusion and LIME: batching does not change the map, seeds reproduce it, and on a model
whose answer depends on one known region the map finds that region."""

from __future__ import annotations

import numpy as np
import pytest
from pydantic import ValidationError

from service.explain import Lime, ModelHandle, Occlusion
from service.explain.lime import fit_surrogate, pattern_kernel, select_features, superpixels
from service.explain.occlusion import window_starts
from service.explain.perturb import baseline_image, blend

SIZE = 48
BLOCK = 16
REGION = (slice(None), slice(16, 32), slice(32, 48))  # one of the 3 x 3 blocks of the image


def _region_model(batch: np.ndarray) -> np.ndarray:
    """Two classes; class 0's logit is the mean of the image over REGION, class 1's is 0."""
    evidence = batch[(slice(None), *REGION)].mean(axis=(1, 2, 3))
    return np.stack([evidence, np.zeros_like(evidence)], axis=1).astype(np.float32)


@pytest.fixture
def region_handle() -> ModelHandle:
    return ModelHandle(_region_model)


@pytest.fixture
def bright_image() -> np.ndarray:
    """3 x 3 blocks of distinct bright colours, with a little noise: clear superpixels."""
    rng = np.random.default_rng(0)
    colours = rng.uniform(0.5, 1.5, size=(3, SIZE // BLOCK, SIZE // BLOCK))
    blocks = np.kron(colours, np.ones((1, BLOCK, BLOCK)))
    return (blocks + 0.02 * rng.standard_normal(blocks.shape)).astype(np.float32)


def _region_mask() -> np.ndarray:
    mask = np.zeros((SIZE, SIZE), bool)
    mask[REGION[1:]] = True
    return mask


@pytest.mark.parametrize("window", [1, 5, 8, 48])
def test_window_starts_cover_every_pixel(window):
    for stride in range(1, window + 1):
        starts = window_starts(SIZE, window, stride)
        covered = np.zeros(SIZE, bool)
        for start in starts:
            covered[start : start + window] = True
        assert covered.all() and starts[-1] == SIZE - window


def test_occlusion_finds_the_region(region_handle, bright_image):
    heatmap = Occlusion(region_handle).attribute(
        bright_image, target=0, window=8, stride=4, score="logit"
    )
    inside, outside = heatmap.values[_region_mask()], heatmap.values[~_region_mask()]
    assert inside.min() > 0 and np.abs(outside).max() < inside.min()


def test_lime_finds_the_region(region_handle, bright_image):
    heatmap = Lime(region_handle).attribute(
        bright_image, target=0, num_samples=200, num_segments=9, score="logit", baseline="zero"
    )
    assert heatmap.values[_region_mask()].mean() > 0.3
    assert np.abs(heatmap.values[~_region_mask()]).mean() < 0.2


@pytest.mark.parametrize("baseline", ["zero", "mean", "blur"])
def test_occlusion_batch_size_does_not_change_the_map(handle, face, baseline):
    x, _ = face
    maps = [
        Occlusion(handle).attribute(x, window=50, stride=25, baseline=baseline, batch_size=size)
        for size in (1, 2, 3, 64)
    ]
    for other in maps[1:]:
        np.testing.assert_allclose(other.values, maps[0].values, atol=1e-5)


def test_lime_batch_size_does_not_change_the_map(handle, face):
    x, _ = face
    maps = [
        Lime(handle).attribute(x, num_samples=24, num_segments=12, batch_size=size)
        for size in (1, 5, 24)
    ]
    for other in maps[1:]:
        np.testing.assert_allclose(other.values, maps[0].values, atol=1e-4)


def test_lime_same_seed_same_map_other_seed_other_map(handle, face):
    x, _ = face
    first, second, other = (
        Lime(handle).attribute(x, num_samples=48, num_segments=20, seed=seed) for seed in (3, 3, 4)
    )
    np.testing.assert_array_equal(first.values, second.values)
    assert not np.allclose(first.values, other.values)


def test_lime_positive_only_and_top_features(handle, face):
    x, _ = face
    heatmap = Lime(handle).attribute(
        x, num_samples=48, num_segments=20, positive_only=True, top_features=3
    )
    assert heatmap.values.min() >= 0
    assert 1 <= len(np.unique(heatmap.values[heatmap.values > 0])) <= 3


def test_stride_larger_than_window_is_rejected(handle, face):
    with pytest.raises(ValidationError, match=r"stride \(40\) must not exceed window \(30\)"):
        Occlusion(handle).attribute(face[0], window=30, stride=40)


@pytest.mark.parametrize("baseline", ["zero", "mean", "blur"])
def test_baselines_have_the_input_shape_and_remove_detail(baseline, face):
    x, _ = face
    image = baseline_image(x, baseline)
    assert image.shape == x.shape and image.dtype == np.float32
    assert image.std(axis=(1, 2)).max() < x.std(axis=(1, 2)).max()


def test_superpixels_are_consecutive_labels(face):
    labels = superpixels(face[0], 40)
    assert labels.shape == face[0].shape[1:]
    assert set(np.unique(labels)) == set(range(labels.max() + 1))
    assert 10 <= labels.max() + 1 <= 80


def test_surrogate_matches_scikit_learn_ridge():
    linear_model = pytest.importorskip("sklearn.linear_model")
    rng = np.random.default_rng(0)
    features = rng.integers(0, 2, size=(200, 12)).astype(np.float64)
    targets = features @ rng.standard_normal(12) + 0.1 * rng.standard_normal(200)
    weights = rng.random(200)
    expected = linear_model.Ridge(alpha=1.0).fit(features, targets, sample_weight=weights).coef_
    np.testing.assert_allclose(fit_surrogate(features, targets, weights), expected, atol=1e-8)


def test_kernel_is_lime_packages_cosine_kernel():
    patterns = np.array([[1, 1, 1, 1], [1, 0, 1, 0], [0, 0, 0, 0]], dtype=np.uint8)
    distances = np.array([0.0, 1 - 2 / (np.sqrt(2) * 2), 1.0])
    np.testing.assert_allclose(pattern_kernel(patterns), np.sqrt(np.exp(-(distances**2) / 0.0625)))


def test_select_features():
    weights = np.array([0.5, -0.9, 0.1, -0.2])
    np.testing.assert_array_equal(select_features(weights, False, 2), [0.5, -0.9, 0, 0])
    np.testing.assert_array_equal(select_features(weights, True, None), [0.5, 0, 0.1, 0])
    np.testing.assert_array_equal(select_features(weights, True, 1), [0.5, 0, 0, 0])


def test_blend_shows_one_image_where_the_mask_is_set_and_the_other_elsewhere(
    bright_image: np.ndarray,
) -> None:
    hidden = baseline_image(bright_image, "blur")
    masks = np.random.default_rng(1).integers(0, 2, size=(5, SIZE, SIZE), dtype=np.uint8)
    images = blend(bright_image, masks, hidden)
    expected = np.where(masks[:, None].astype(bool), bright_image[None], hidden[None])
    assert images.shape == (5, 3, SIZE, SIZE) and images.dtype == np.float32
    off = np.broadcast_to(~masks[:, None].astype(bool), images.shape)
    np.testing.assert_array_equal(images[off], expected[off])  # hidden pixels exactly
    np.testing.assert_array_max_ulp(images, expected, maxulp=1)  # shown: the last bit at most
    assert np.array_equal(blend(bright_image, masks.astype(bool), hidden), images)
