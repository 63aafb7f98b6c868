"""RISE (Petsiuk et al. 2018): score the image under random smooth masks, and weigh each mask
by the score it got.

Each mask is a ``grid x grid`` random binary pattern (cells kept with probability ``keep``),
upsampled bilinearly to ``(grid + 1)`` cells' worth of pixels and cropped at a random offset
within one cell, so that its soft edges fall anywhere. A masked image shows ``x`` where the
mask is 1 and the baseline where it is 0. A pixel's value is the mean score of the masks that
show it minus the mean score of all masks: ``sum_i (s_i - mean s) M_i / (N keep)``. Unlike the
paper's ``E[s | pixel shown]``, which is positive everywhere, this is signed: positive where
showing the pixel raises the target's score. Masks are made batch by batch from the seed (the
same seed gives the same map) and never held all at once; forward passes go through the plain
forward function, ``batch_size`` per pass.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from pydantic import Field

from service.explain.base import Explainer, sampled_passes
from service.explain.convergence import STOP_HELP, Sampling, SplitHalf, Stop, parity_halves
from service.explain.heatmap import split_half_agreement
from service.explain.objective import Objective, Score
from service.explain.perturb import (
    BASELINE_HELP,
    SCORE_HELP,
    Baseline,
    PerturbationParams,
    baseline_image,
    batch_bounds,
    batch_buffer,
    blend,
    score_kind,
)

CONVERGENCE = SplitHalf(agreement=0.6, min_samples=64)
"""``stop=converged``: the maps of the even and the odd masks agree enough that two maps of all
the masks so far would reach Spearman 0.6 (Spearman-Brown), with at least 64 masks in. RISE's
pixel maps are noisy (its two halves of 256 masks agree 0.2 to 0.5), their deletion AUC much
less so; at 0.5 the deletion AUC rose by 0.0100 on 24 test faces, at the gate's edge:
bench/bench_converged.py, bench/results/converged.md."""


class RiseParams(PerturbationParams):
    num_masks: int = Field(
        256, ge=16, le=4000, description="random masks scored (at most, with stop=converged)"
    )
    grid: int = Field(8, ge=2, le=32, description="cells per side of a mask before upsampling")
    keep: float = Field(0.5, ge=0.05, le=0.95, description="probability that a cell is shown")
    seed: int = Field(0, ge=0, le=2**31 - 1, description="sampling seed: same seed, same map")
    stop: Stop = Field("converged", description=STOP_HELP)
    baseline: Baseline = Field("zero", description="what a hidden cell shows: " + BASELINE_HELP)
    score: Score | None = Field(None, description=SCORE_HELP)
    batch_size: int = Field(32, ge=1, le=256, description="masked images per forward pass")


class Rise(Explainer):
    """Signed, [-1, 1]: how much showing the pixel raises the target's mean score over the
    random masks, divided by the largest magnitude."""

    name = "rise"
    title = "RISE"
    shows = (
        "Show the photo through hundreds of random blurry masks and score every variant "
        "(Petsiuk et al. 2018): red where the class score is higher when the region is "
        "visible, blue where it is lower."
    )
    signal_names = ("split_half_agreement",)
    quality_by_default = True
    Params = RiseParams
    signed = True
    anytime = True
    units = "mean target score (probability or logit) of masks showing the pixel minus that of all"
    cost_hint = "lower num_masks"

    @classmethod
    def planned_passes(cls, params: RiseParams, side: tuple[int, int]) -> int:
        return sampled_passes(params.num_masks, params.batch_size)

    def _attribute(
        self, x: np.ndarray, objective: Objective, params: RiseParams, logits: np.ndarray
    ) -> np.ndarray:
        _, height, width = x.shape
        rng = np.random.default_rng(params.seed)
        cells = rng.random((params.num_masks, params.grid, params.grid)) < params.keep
        cell_h, cell_w = -(-height // params.grid), -(-width // params.grid)
        shifts = rng.integers(0, [cell_h, cell_w], size=(params.num_masks, 2))
        baseline = baseline_image(x, params.baseline)

        scores = np.empty(params.num_masks, dtype=np.float64)
        scorer = self.scorer(objective, score_kind(params.score, objective))
        # sums over each half of the masks: their two maps' agreement is a signal of the map's
        # noise (``Heatmap.signals``), and their sum is the map's own
        half = params.num_masks // 2
        total = np.zeros((2, height, width), dtype=np.float64)
        weighted = np.zeros((2, height, width), dtype=np.float64)
        # the same sums over the even and the odd masks: the halves of the stopping test
        parity_total = np.zeros((2, height, width), dtype=np.float64)
        parity_weighted = np.zeros((2, height, width), dtype=np.float64)
        used, agreement = params.num_masks, 0.0
        buffer = batch_buffer(params.batch_size, x.shape)
        for start, stop in batch_bounds(params.num_masks, params.batch_size):
            self.model.cancellation.check()
            masks = _upsampled(cells[start:stop], shifts[start:stop], (cell_h, cell_w), x.shape)
            scores[start:stop] = scorer(blend(x, masks, baseline, buffer))
            for side, (a, b) in enumerate(((start, min(stop, half)), (max(start, half), stop))):
                if a < b:
                    weighted[side] += np.tensordot(scores[a:b], masks[a - start : b - start], 1)
                    total[side] += masks[a - start : b - start].sum(axis=0)
            if params.stop == "converged":
                for side, part in enumerate(parity_halves(start, stop)):
                    parity_weighted[side] += np.tensordot(scores[start:stop][part], masks[part], 1)
                    parity_total[side] += masks[part].sum(axis=0)
                parity_scores = (scores[0:stop:2], scores[1:stop:2])
                reached, agreement = CONVERGENCE.reached(
                    stop,
                    *(
                        _estimate(parity_weighted[side], parity_total[side], s, params)
                        for side, s in enumerate(parity_scores)
                    ),
                )
                if reached and stop < params.num_masks:
                    used = stop
                    break
            if self.watched and stop < params.num_masks:  # the same estimate over masks so far
                self.report_partial(_estimate(weighted.sum(0), total.sum(0), scores[:stop], params))
        self.sampling = Sampling(used, params.num_masks, params.stop)
        if used < params.num_masks:  # the halves of the test that stopped it
            self.signals["split_half_agreement"] = agreement
            return _estimate(parity_weighted.sum(0), parity_total.sum(0), scores[:used], params)
        self.signals["split_half_agreement"] = split_half_agreement(
            _estimate(weighted[0], total[0], scores[:half], params),
            _estimate(weighted[1], total[1], scores[half:], params),
        )
        return _estimate(weighted.sum(0), total.sum(0), scores, params)


def _estimate(
    weighted: np.ndarray, total: np.ndarray, scores: np.ndarray, params: RiseParams
) -> np.ndarray:
    """The map over the masks of ``scores``: ``weighted = sum_i s_i M_i``, ``total = sum_i M_i``.
    sum_i (s_i - mean s) M_i == sum_i s_i M_i - mean s * sum_i M_i."""
    return (weighted - scores.mean() * total) / (len(scores) * params.keep)


def _upsampled(
    cells: np.ndarray, shifts: np.ndarray, cell: tuple[int, int], shape: tuple[int, ...]
) -> np.ndarray:
    """``(n, grid, grid)`` binary cells -> ``(n, H, W)`` float32 soft masks: bilinear over
    ``grid + 1`` cells (the last one repeats the border), cropped at each mask's shift."""
    height, width = shape[1:]
    padded = np.pad(cells, ((0, 0), (0, 1), (0, 1)), mode="edge").astype(np.float32)
    grid = cells.shape[1] + 1
    big = F.interpolate(
        torch.from_numpy(padded)[:, None],
        size=(grid * cell[0], grid * cell[1]),
        mode="bilinear",
        align_corners=False,
    )[:, 0].numpy()
    return np.stack(
        [m[dy : dy + height, dx : dx + width] for m, (dy, dx) in zip(big, shifts, strict=True)]
    )
