"""When a sampling method may stop: its map has converged once two independent halves of the
samples scored so far agree.

LIME, RISE and SmoothGrad estimate their map from random samples; integrated gradients from
points on a path; occlusion's coarse-to-fine schedule refines an interpolated grid. Each has a
fixed budget (``num_samples``, ``num_masks``, ``samples``, ``steps``, ``refine``). With
``stop=converged`` a method checks, after every batch, whether more samples would still change
the map, and stops once they would not, never beyond the fixed budget:

- the **split-half test** (LIME, RISE, SmoothGrad): the samples are dealt alternately into two
  halves (even and odd sample index, so both halves grow alike and hold the same number), each
  half gives its own estimate of the map, and their Spearman rank correlation ``r`` says how
  repeatable an estimate of half the size is. The Spearman-Brown formula ``2r / (1 + r)``
  predicts the agreement of two independent estimates of the full size; sampling stops once it
  reaches the method's ``agreement`` (and at least ``min_samples`` are in);
- the **change test** (integrated gradients' nested path grids, occlusion's refinement): one
  more batch changes the map by less than ``tolerance`` of its largest magnitude.

Both read only the scores of the samples, which the seed fixes: the same input, parameters and
seed stop at the same sample and give the same map under any load. ``Sampling`` records how
many samples were used and planned; the answer carries it (``samples`` in JSON, headers on a
PNG).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import numpy as np

from service.explain.heatmap import split_half_agreement

Stop = Literal["converged", "fixed"]
STOP_HELP = (
    "when sampling ends: fixed = the whole budget; converged = once the map is stable "
    "(checked after every batch: two halves of the samples so far agree, or a batch no longer "
    "changes it; never beyond the budget); docs/explanations.md#stopping-when-the-map-has-converged"
)


@dataclass(frozen=True)
class Sampling:
    """How much of its budget a method used: ``used`` samples (masks, noisy copies, path
    points, refined windows) of the ``planned`` ones, and the ``stop`` rule it followed."""

    used: int
    planned: int
    stop: Stop


@dataclass(frozen=True)
class SplitHalf:
    """The split-half test: stop once ``2r / (1 + r) >= agreement``, ``r`` the Spearman
    correlation of the two halves' maps, with at least ``min_samples`` samples in."""

    agreement: float
    min_samples: int

    def predicted(self, first: np.ndarray, second: np.ndarray) -> tuple[float, float]:
        """The halves' Spearman ``r`` and the predicted full-size agreement ``2r / (1 + r)``
        (``r`` itself where it is not positive)."""
        r = split_half_agreement(first, second)
        return r, (2.0 * r / (1.0 + r) if r > 0 else r)

    def reached(self, samples: int, first: np.ndarray, second: np.ndarray) -> tuple[bool, float]:
        """Whether sampling may stop after ``samples`` samples whose halves gave the maps
        ``first`` and ``second``, and the halves' ``r``."""
        r, full = self.predicted(first, second)
        return samples >= self.min_samples and full >= self.agreement, r


def parity_halves(start: int, stop: int) -> tuple[slice, slice]:
    """Within a batch of samples ``start..stop-1``, the positions of the even- and of the
    odd-indexed samples (the two halves of the split-half test)."""
    first = start % 2
    return slice(first, stop - start, 2), slice(1 - first, stop - start, 2)


def changed_less_than(change: np.ndarray, reference: np.ndarray, tolerance: float) -> bool:
    """The change test: the largest ``|change|`` is below ``tolerance`` times the largest
    ``|reference|`` (a flat reference: any change counts)."""
    scale = float(np.max(np.abs(reference))) if reference.size else 0.0
    return float(np.max(np.abs(change), initial=0.0)) < tolerance * scale
