"""Heatmaps in model-input coordinates, placed into boxes of the uploaded image."""

from __future__ import annotations

import numpy as np
import pytest

from service.explain import Heatmap, place_in_box


def make_heatmap(values: np.ndarray, signed: bool = False) -> Heatmap:
    return Heatmap(
        values=values,
        method="test",
        target=0,
        signed=signed,
        value_range=(-1.0, 1.0) if signed else (0.0, 1.0),
        units="test units",
        scale=2.0,
        logits=np.array([2.0, 0.0], np.float32),
    )


def test_whole_image_is_the_default_box():
    values = np.linspace(0, 1, 150 * 150, dtype=np.float32).reshape(150, 150)
    placed = make_heatmap(values).place((112, 90))
    assert placed.shape == (90, 112) and placed.dtype == np.float32
    assert placed[0, 0] < 0.05 and placed[-1, -1] > 0.95


def test_same_size_is_unchanged():
    values = np.random.default_rng(0).random((20, 30)).astype(np.float32)
    np.testing.assert_array_equal(place_in_box(values, (30, 20)), values)


def test_box_is_filled_and_the_rest_is_zero():
    placed = place_in_box(np.ones((150, 150), np.float32), (200, 100), (40, 10, 120, 70))
    assert placed.shape == (100, 200)
    assert placed[10:70, 40:120].min() == 1.0
    assert placed.sum() == 80 * 60


def test_box_reaching_outside_the_image_is_cut_off():
    values = np.zeros((10, 10), np.float32)
    values[:, :5] = 1.0  # left half
    placed = place_in_box(values, (50, 40), (-20, 30, 20, 70))  # 40 x 40, left half outside
    assert placed.shape == (40, 50)
    assert placed[30:, :20].mean() == pytest.approx(0.0, abs=0.05)
    assert placed[:30].sum() == 0 and placed[:, 20:].sum() == 0


@pytest.mark.parametrize("box", [(10, 10, 10, 20), (10, 20, 30, 5)])
def test_empty_box_is_rejected(box):
    with pytest.raises(ValueError, match="empty box"):
        place_in_box(np.ones((4, 4), np.float32), (50, 50), box)


def test_values_are_read_only_float32_and_2d():
    heatmap = make_heatmap(np.ones((4, 4), np.float64))
    assert heatmap.values.dtype == np.float32 and not heatmap.values.flags.writeable
    with pytest.raises(ValueError, match=r"\(H, W\)"):
        make_heatmap(np.ones((1, 4, 4)))


def test_prediction_from_logits():
    heatmap = make_heatmap(np.ones((4, 4)))
    assert heatmap.predicted == 0
    assert heatmap.probabilities[0] == pytest.approx(1 / (1 + np.exp(-2.0)))
