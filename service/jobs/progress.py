"""How far a job has got: forward passes run against the passes its method plans.

Every forward pass of an explanation or a synthesis goes through its ``Cancellation``'s
``batch()`` (the ONNX engine per chunk, the twin per pass), so counting those calls measures the
work done without the methods knowing about jobs. What a method plans follows from its
parameters: one pass for the prediction, then its samples (LIME's patterns, RISE's masks,
SmoothGrad's noisy copies, integrated gradients' path points, occlusion's windows) in batches,
or one pass per step of a synthesis. Progress stays below 1 until the job is done, since an
estimate can be short by a pass.
"""

from __future__ import annotations

import math
from typing import Any

from service.explain import EXPLAINERS
from service.explain.occlusion import window_starts
from service.explain.window_schedule import coarse_indices

# Which parameter counts a sampling method's samples.
SAMPLE_COUNTS = ("num_samples", "num_masks", "samples", "steps")
# Passes of the gradient methods that take one (the prediction, then the twin's).
SINGLE_PASS = 2
ALMOST_DONE = 0.99


def planned_passes(method: str, params: dict[str, Any], side: tuple[int, int]) -> int:
    """Forward passes ``method`` runs with ``params`` on a model input of ``side`` (H, W)."""
    if method == "maximize":
        return int(params["steps"]) + 2  # the score before and after
    checked = EXPLAINERS[method].Params.model_validate(params)
    batch = int(getattr(checked, "batch_size", 1))
    if method == "occlusion":
        return 1 + _occlusion_batches(checked, side, batch)
    for name in SAMPLE_COUNTS:
        if hasattr(checked, name):
            return 1 + math.ceil(int(getattr(checked, name)) / batch)
    return SINGLE_PASS


def _occlusion_batches(params: Any, side: tuple[int, int], batch: int) -> int:
    """Batches of occluded images: every window (``exhaustive``), or the coarse grid and then
    the ``refine`` share of the other windows (``coarse_to_fine``), each batched apart."""
    starts = [window_starts(size, min(params.window, size), params.stride) for size in side]
    windows = len(starts[0]) * len(starts[1])
    if params.strategy == "exhaustive":
        return math.ceil(windows / batch)
    coarse = len(coarse_indices(len(starts[0]))) * len(coarse_indices(len(starts[1])))
    refined = math.ceil(params.refine * (windows - coarse))
    return math.ceil(coarse / batch) + math.ceil(refined / batch)


class PassCounter:
    """Counts passes against a plan; ``fraction`` is the progress to report (< 1)."""

    def __init__(self, planned: int) -> None:
        self.planned = max(1, planned)
        self.done = 0

    def count(self) -> float:
        self.done += 1
        return self.fraction

    @property
    def fraction(self) -> float:
        return min(ALMOST_DONE, self.done / self.planned)
