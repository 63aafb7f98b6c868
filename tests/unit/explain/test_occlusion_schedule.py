"""Occlusion's window schedules: coarse-to-fine scores fewer windows, exactly where it scores,
finds peaks between its coarse positions, and with ``refine=1`` is the exhaustive map."""

from __future__ import annotations

import numpy as np

from service.explain import ModelHandle, Occlusion
from service.explain.occlusion import window_starts
from service.explain.window_schedule import coarse_indices, coarse_to_fine, exhaustive

STARTS = window_starts(150, 24, 12)  # the defaults on the bundle's 150 px input: 12 per axis


def _field(values: np.ndarray):
    """``drops_at`` over a known ``(rows, cols)`` grid of drops, recording what it scored."""
    scored: list[tuple[int, int]] = []

    def drops_at(rows: np.ndarray, cols: np.ndarray) -> np.ndarray:
        scored.extend(zip(rows.tolist(), cols.tolist(), strict=True))
        return values[rows, cols]

    return drops_at, scored


def test_coarse_indices_are_every_second_and_the_last():
    assert coarse_indices(12).tolist() == [0, 2, 4, 6, 8, 10, 11]
    assert coarse_indices(11).tolist() == [0, 2, 4, 6, 8, 10]
    assert coarse_indices(5).tolist() == [0, 2, 4]
    assert coarse_indices(4).tolist() == [0, 2, 3]
    assert coarse_indices(1).tolist() == [0]


def test_a_linear_field_is_interpolated_exactly_from_the_coarse_grid():
    rows, cols = np.meshgrid(np.asarray(STARTS, float), np.asarray(STARTS, float), indexing="ij")
    linear = 0.5 + 0.01 * rows - 0.003 * cols
    drops_at, scored = _field(linear)

    drops, count = coarse_to_fine(STARTS, STARTS, drops_at, refine=0.0)

    assert count == len(scored) == 49  # 7 x 7 of the 12 x 12 positions
    np.testing.assert_allclose(drops, linear, atol=1e-12)


def test_a_peak_between_coarse_positions_is_scored_not_guessed():
    rows, cols = np.indices((len(STARTS), len(STARTS)))
    # a bump on an odd row and column (no coarse position there), tilted a little so that one
    # coarse neighbour, (4, 8), sees the most of it
    field = np.exp(-((rows - 5) ** 2 + (cols - 7) ** 2) / 2.0) + 0.01 * (cols - rows)
    drops_at, scored = _field(field)

    drops, count = coarse_to_fine(STARTS, STARTS, drops_at, refine=0.1)

    assert (5, 7) in scored and drops[5, 7] == field[5, 7]
    assert count == len(set(scored)) == 49 + 10  # ceil(0.1 * 95) refined, none twice
    assert np.unravel_index(np.argmax(drops), drops.shape) == (5, 7)


def test_refining_everything_is_the_exhaustive_grid():
    values = np.random.default_rng(0).random((len(STARTS), len(STARTS)))
    drops_at, scored = _field(values)

    drops, count = coarse_to_fine(STARTS, STARTS, drops_at, refine=1.0)

    np.testing.assert_array_equal(drops, exhaustive(len(STARTS), len(STARTS), _field(values)[0]))
    assert count == len(set(scored)) == len(STARTS) ** 2


def _counting(handle: ModelHandle) -> tuple[ModelHandle, list[int]]:
    images: list[int] = []

    def forward(batch: np.ndarray) -> np.ndarray:
        images.append(len(batch))
        return handle.forward(batch)

    return ModelHandle(forward), images


def test_coarse_to_fine_on_a_face_scores_73_of_144_windows_and_repeats_itself(handle, face):
    x, _ = face
    counted, images = _counting(handle)

    first = Occlusion(counted).attribute(x)  # defaults: window 24, stride 12, refine 0.25
    assert sum(images) == 1 + 49 + 24  # the unperturbed pass, the coarse grid, ceil(0.25 * 95)
    second = Occlusion(handle).attribute(x, batch_size=7)

    np.testing.assert_allclose(second.values, first.values, atol=1e-5)
    assert first.params["strategy"] == "coarse_to_fine"


def test_refine_1_is_todays_exhaustive_map_on_a_face(handle, face):
    """Same windows, same drops: equal up to ONNX Runtime's batch-to-batch rounding (the two
    strategies put different windows in a batch)."""
    x, _ = face
    counted, images = _counting(handle)

    exhaustive_map = Occlusion(counted).attribute(x, strategy="exhaustive")
    assert sum(images) == 1 + 144
    refined = Occlusion(handle).attribute(x, strategy="coarse_to_fine", refine=1.0)

    np.testing.assert_allclose(refined.values, exhaustive_map.values, atol=1e-5)
