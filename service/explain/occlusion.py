"""Occlusion (Zeiler & Fergus 2014): slide a patch over the image, see how the score drops.

Each window position replaces a ``window x window`` square (model-input pixels) with the
baseline; a pixel's value is the mean drop of the target score over the windows that cover it.
The last window of each row and column is moved flush with the border, so every pixel is
covered. All occluded images go through the plain forward function, ``batch_size`` per pass.

``strategy`` says which window positions are scored (``window_schedule``): ``exhaustive`` scores
all of them (window 24, stride 12 on a 150 px input: 144 passes); ``coarse_to_fine``, the
default, scores every second position per axis and the last, and the ``refine`` share of the
rest next to the largest drops, and interpolates the others (73 of the 144 at the defaults; 78
at ``refine`` 0.3, the default of earlier versions). On 48 test faces framed as the model sees
them its deletion AUC stayed within 0.01 of the 78-window schedule's (+0.002; the exhaustive
map's is 0.017 lower: docs/explanations.md, bench/bench_converged.py). An exact incremental
variant (recomputing only the activations a patch changes, Krypton) was measured and not kept:
on this network it saves at most 42 % of the multiply-adds, and only through per-region
convolutions that ONNX Runtime does not run (bench/bench_perturb.py).
"""

from __future__ import annotations

import math
from typing import Literal

import numpy as np
from pydantic import Field, model_validator

from service.explain.base import Explainer
from service.explain.convergence import Sampling, Stop
from service.explain.objective import Objective, Score
from service.explain.perturb import (
    BASELINE_HELP,
    SCORE_HELP,
    Baseline,
    PerturbationParams,
    baseline_image,
    batch_buffer,
    score_kind,
    target_scores,
)
from service.explain.window_schedule import coarse_indices, coarse_to_fine, exhaustive

Strategy = Literal["exhaustive", "coarse_to_fine"]
STRATEGY_HELP = (
    "which window positions are scored: exhaustive = every one; coarse_to_fine = every second "
    "one per axis and the last, then the refine share of the others next to the largest drops, "
    "the rest interpolated (73 of 144 windows at the defaults; deletion AUC within 0.01 on the "
    "test faces)"
)

REFINE_TOLERANCE = 0.05
"""``stop=converged``: refining ends once a batch of refined windows corrects their interpolated
drops by less than 5 % of the largest drop (bench/bench_converged.py)."""
STOP_HELP = (
    "coarse_to_fine only: fixed = score the whole refine share; converged = score it a batch "
    "at a time, windows next to the largest drops first, and end once a batch corrects the "
    f"interpolated drops by less than {REFINE_TOLERANCE:.0%} of the largest drop"
)


class OcclusionParams(PerturbationParams):
    window: int = Field(24, ge=4, le=96, description="side of the square patch (model-input px)")
    stride: int = Field(12, ge=4, le=96, description="step between patches (model-input px)")
    baseline: Baseline = Field("zero", description="what the patch shows: " + BASELINE_HELP)
    score: Score | None = Field(None, description=SCORE_HELP)
    batch_size: int = Field(32, ge=1, le=256, description="occluded images per forward pass")
    strategy: Strategy = Field("coarse_to_fine", description=STRATEGY_HELP)
    refine: float = Field(
        0.25,
        ge=0.0,
        le=1.0,
        description="coarse_to_fine: share of the skipped positions scored exactly (1 = all; "
        "at most, with stop=converged)",
    )
    stop: Stop = Field("fixed", description=STOP_HELP)

    @model_validator(mode="after")
    def _stride_within_window(self) -> OcclusionParams:
        if self.stride > self.window:
            raise ValueError(
                f"stride ({self.stride}) must not exceed window ({self.window}): pixels between "
                "windows would never be occluded"
            )
        return self


class Occlusion(Explainer):
    """Signed, [-1, 1]: drop of the target score when a patch around the pixel is hidden,
    divided by the largest magnitude. Positive = hiding it lowers the score (evidence for the
    target); negative = hiding it raises the score."""

    name = "occlusion"
    title = "Occlusion"
    shows = (
        "Hide one square patch at a time and watch the class score: red where hiding the patch "
        "lowers the score (it supported the class), blue where it raises it."
    )
    Params = OcclusionParams
    signed = True
    anytime = True
    units = "mean drop of the target score (probability or logit) when occluded"
    cost_hint = "raise stride, or use strategy=coarse_to_fine with a lower refine"

    @classmethod
    def planned_passes(cls, params: OcclusionParams, side: tuple[int, int]) -> int:
        """The prediction, then batches of occluded images: every window (``exhaustive``), or
        the coarse grid and then the ``refine`` share of the other windows (``coarse_to_fine``),
        each batched apart."""
        windows, coarse = _grid(params, side)
        batch = params.batch_size
        if params.strategy == "exhaustive":
            return 1 + math.ceil(windows / batch)
        refined = math.ceil(params.refine * (windows - coarse))
        return 1 + math.ceil(coarse / batch) + math.ceil(refined / batch)

    def _attribute(
        self, x: np.ndarray, objective: Objective, params: OcclusionParams, logits: np.ndarray
    ) -> np.ndarray:
        _, height, width = x.shape
        window_h, window_w = min(params.window, height), min(params.window, width)
        row_starts = window_starts(height, window_h, params.stride)
        col_starts = window_starts(width, window_w, params.stride)
        baseline = baseline_image(x, params.baseline)
        original = self.photo_score(x, objective, score_kind(params.score, objective), logits)

        # what a watcher sees: the drops scored so far (the estimate where one exists, 0 else)
        known = np.zeros((len(row_starts), len(col_starts)), dtype=np.float64)

        def show(drops: np.ndarray) -> None:
            known[...] = drops
            self.report_partial(
                spread(known, row_starts, col_starts, (window_h, window_w), (height, width))
            )

        buffer = batch_buffer(params.batch_size, x.shape)

        def drops_at(rows: np.ndarray, cols: np.ndarray) -> np.ndarray:
            corners = [(row_starts[r], col_starts[c]) for r, c in zip(rows, cols, strict=True)]

            def occluded(start: int, stop: int) -> np.ndarray:
                batch = buffer[: stop - start]
                batch[...] = x
                for row, (top, left) in zip(batch, corners[start:stop], strict=True):
                    patch = (slice(None), slice(top, top + window_h), slice(left, left + window_w))
                    row[patch] = baseline[patch]
                return batch

            def scored(stop: int, scores: np.ndarray) -> None:
                partial = known.copy()
                partial[rows[:stop], cols[:stop]] = original - scores[:stop]
                show(partial)

            scores = target_scores(
                self.scorer(objective, score_kind(params.score, objective)),
                occluded,
                len(corners),
                params.batch_size,
                self.model.cancellation,
                on_batch=scored if self.watched else None,
            )
            drops = original - scores
            if self.watched:
                partial = known.copy()
                partial[rows, cols] = drops
                show(partial)
            return drops

        windows = len(row_starts) * len(col_starts)
        if params.strategy == "exhaustive":
            drops = exhaustive(len(row_starts), len(col_starts), drops_at)
            self.sampling = Sampling(windows, windows, "fixed")
        else:
            estimate = show if self.watched else None
            converge = (params.batch_size, REFINE_TOLERANCE) if params.stop == "converged" else None
            drops, used = coarse_to_fine(
                row_starts, col_starts, drops_at, params.refine, estimate, converge
            )
            self.sampling = Sampling(used, planned_windows(params, (height, width)), params.stop)
        return spread(drops, row_starts, col_starts, (window_h, window_w), (height, width))


def _grid(params: OcclusionParams, side: tuple[int, int]) -> tuple[int, int]:
    """The windows on a model input of ``side`` (H, W), and those of the coarse grid."""
    starts = [window_starts(size, min(params.window, size), params.stride) for size in side]
    coarse = len(coarse_indices(len(starts[0]))) * len(coarse_indices(len(starts[1])))
    return len(starts[0]) * len(starts[1]), coarse


def planned_windows(params: OcclusionParams, side: tuple[int, int]) -> int:
    """The windows ``params`` score at most on a model input of ``side``: all of them
    (``exhaustive``), or the coarse grid and the ``refine`` share of the rest."""
    windows, coarse = _grid(params, side)
    if params.strategy == "exhaustive":
        return windows
    return coarse + math.ceil(params.refine * (windows - coarse))


def window_starts(size: int, window: int, stride: int) -> list[int]:
    """Start offsets of windows along one axis; the last one ends at ``size``."""
    starts = list(range(0, size - window + 1, stride))
    if starts[-1] != size - window:
        starts.append(size - window)
    return starts


def spread(
    drops: np.ndarray,
    row_starts: list[int],
    col_starts: list[int],
    window: tuple[int, int],
    shape: tuple[int, int],
) -> np.ndarray:
    """``(H, W)`` float64 map: each pixel's mean of ``drops`` ``(rows, cols)`` over the windows
    (``window`` = (height, width), at ``row_starts x col_starts``) that cover it."""
    (window_h, window_w), total = window, np.zeros(shape, dtype=np.float64)
    count = np.zeros(shape, dtype=np.float64)
    for i, top in enumerate(row_starts):
        for j, left in enumerate(col_starts):
            total[top : top + window_h, left : left + window_w] += drops[i, j]
            count[top : top + window_h, left : left + window_w] += 1
    return total / count
