"""Anytime maps: the sampling methods report their estimate after each batch when watched, the
estimates change as samples come in, and watching never changes the final map."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest

from service.explain import EXPLAINERS, ModelHandle

# Small runs: several batches each, the last one not reported (the final map follows it); the
# whole budget (stop=fixed), so that the batches are known.
CASES = {
    "lime": ({"num_samples": 96, "batch_size": 16, "stop": "fixed"}, 5),
    "rise": ({"num_masks": 96, "batch_size": 16, "stop": "fixed"}, 5),
    # 12 x 12 windows in batches of 32: 4 batches, then the whole grid once more
    "occlusion exhaustive": (
        {"strategy": "exhaustive", "window": 24, "stride": 12, "batch_size": 32},
        5,
    ),
    # coarse 6 x 6 = 36: after its first batch and when done, the interpolated estimate, then
    # the 17 refined windows in one batch
    "occlusion coarse_to_fine": ({"window": 24, "stride": 12, "batch_size": 32}, 4),
    # the gradient methods report after every batch, the last one too
    "smoothgrad": ({"samples": 8, "batch_size": 2, "seed": 3, "stop": "fixed"}, 4),
    "integrated_gradients": ({"steps": 16, "batch_size": 4}, 4),
}


@pytest.mark.parametrize("case", list(CASES))
def test_watched_methods_refine_a_partial_map_and_end_at_the_unwatched_one(
    handle: ModelHandle, face: tuple[np.ndarray, int], case: str
) -> None:
    x, _ = face
    params, expected_reports = CASES[case]
    explainer = EXPLAINERS[case.split()[0]]
    partials: list[np.ndarray] = []
    watched = dataclasses.replace(
        handle, report=lambda values, scale, negligible: partials.append(values.copy())
    )

    final = explainer(watched).attribute(x, **params)
    unwatched = explainer(handle).attribute(x, **params)

    np.testing.assert_array_equal(final.values, unwatched.values)
    assert len(partials) == expected_reports
    low, high = explainer.value_range
    for partial in partials:
        assert partial.shape == final.values.shape
        assert low <= partial.min() and partial.max() <= high
    changes = sum(not np.array_equal(a, b) for a, b in zip(partials, partials[1:], strict=False))
    assert changes >= len(partials) - 1  # every report says something new
    # the estimate moves toward the final map
    first, last = (
        np.corrcoef(p.ravel(), final.values.ravel())[0, 1] for p in (partials[0], partials[-1])
    )
    assert last > first
