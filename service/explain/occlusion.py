"""Occlusion (Zeiler & Fergus 2014): slide a patch over the image, see how the score drops.

Each window position replaces a ``window x window`` square (model-input pixels) with the
baseline; a pixel's value is the mean drop of the target score over the windows that cover it.
The last window of each row and column is moved flush with the border, so every pixel is
covered. All occluded images go through the plain forward function, ``batch_size`` per pass.
"""

from __future__ import annotations

import numpy as np
from pydantic import Field, model_validator

from .base import Explainer, MethodParams
from .perturb import (
    BASELINE_HELP,
    SCORE_HELP,
    Baseline,
    Score,
    baseline_image,
    score_of,
    target_scores,
)


class OcclusionParams(MethodParams):
    window: int = Field(24, ge=4, le=96, description="side of the square patch (model-input px)")
    stride: int = Field(12, ge=4, le=96, description="step between patches (model-input px)")
    baseline: Baseline = Field("zero", description="what the patch shows: " + BASELINE_HELP)
    score: Score = Field("probability", description=SCORE_HELP)
    batch_size: int = Field(32, ge=1, le=256, description="occluded images per forward pass")

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
    units = "mean drop of the target score (probability or logit) when occluded"

    def _attribute(
        self, x: np.ndarray, target: int, params: OcclusionParams, logits: np.ndarray
    ) -> np.ndarray:
        _, height, width = x.shape
        window_h, window_w = min(params.window, height), min(params.window, width)
        corners = [
            (top, left)
            for top in window_starts(height, window_h, params.stride)
            for left in window_starts(width, window_w, params.stride)
        ]
        baseline = baseline_image(x, params.baseline)

        def occluded(start: int, stop: int) -> np.ndarray:
            batch = np.repeat(x[None], stop - start, axis=0)
            for row, (top, left) in zip(batch, corners[start:stop], strict=True):
                patch = (slice(None), slice(top, top + window_h), slice(left, left + window_w))
                row[patch] = baseline[patch]
            return batch

        original = score_of(logits[None], target, params.score)[0]
        scores = target_scores(
            self.model.forward,
            occluded,
            len(corners),
            target,
            params.batch_size,
            params.score,
            self.model.cancellation,
        )
        total = np.zeros((height, width), dtype=np.float64)
        count = np.zeros((height, width), dtype=np.float64)
        for (top, left), score in zip(corners, scores, strict=True):
            total[top : top + window_h, left : left + window_w] += original - score
            count[top : top + window_h, left : left + window_w] += 1
        return total / count


def window_starts(size: int, window: int, stride: int) -> list[int]:
    """Start offsets of windows along one axis; the last one ends at ``size``."""
    starts = list(range(0, size - window + 1, stride))
    if starts[-1] != size - window:
        starts.append(size - window)
    return starts
