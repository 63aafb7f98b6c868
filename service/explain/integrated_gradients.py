"""Integrated gradients (Sundararajan et al. 2017) from a baseline image to the input.

With ``stop=fixed`` captum integrates over ``steps`` points by the ``quadrature`` rule. With
``stop=converged`` the path is cut into ``steps`` equal pieces whose midpoints are visited in an
interleaved order (the bit-reversed order of their indices: every prefix spreads over the whole
path), ``batch_size`` per pass; after each pass the mean gradient over the points so far is the
estimate, and the split-half test (``convergence``: the points dealt alternately into two
halves) says when more points would no longer change the map. Run to the end it is the midpoint
rule over ``steps`` points.
"""

from __future__ import annotations

import math
from typing import Any, Literal

import numpy as np
import torch
from captum.attr import IntegratedGradients as CaptumIntegratedGradients
from pydantic import Field, model_validator

from service.common.twin import input_gradients
from service.explain.base import Explainer, MethodParams, sampled_passes
from service.explain.convergence import STOP_HELP, Sampling, SplitHalf, Stop
from service.explain.objective import Objective
from service.explain.perturb import BASELINE_HELP, Baseline, baseline_image
from service.explain.twin import as_batch, score_head

CONVERGENCE = SplitHalf(agreement=0.95, min_samples=8)
"""``stop=converged``: the maps of the two halves of the path points so far agree enough that two
maps of all of them would reach Spearman 0.95 (Spearman-Brown), with at least 8 points in;
bench/bench_converged.py measured it (docs/explanations.md)."""


class IntegratedGradientsParams(MethodParams):
    steps: int = Field(
        32,
        ge=2,
        le=256,
        description="points on the path from baseline to input (at most, with stop=converged)",
    )
    baseline: Baseline = Field("zero", description="the path's start: " + BASELINE_HELP)
    batch_size: int = Field(16, ge=1, le=128, description="path points per forward/backward pass")
    quadrature: Literal["gausslegendre", "riemann_trapezoid"] = Field(
        "gausslegendre",
        description="quadrature rule along the path (stop=fixed; converged takes the midpoints "
        "in an interleaved order)",
    )
    stop: Stop = Field("fixed", description=STOP_HELP)

    @model_validator(mode="after")
    def _quadrature_with_fixed(self) -> IntegratedGradientsParams:
        if self.stop == "converged" and "quadrature" in self.model_fields_set:
            raise ValueError(
                "quadrature applies to stop=fixed; stop=converged takes the midpoints of the "
                "path in an interleaved order"
            )
        return self


class IntegratedGradients(Explainer):
    """Signed, [-1, 1]: attributions summed over channels, divided by the largest magnitude.
    Positive pixels raise the target logit relative to the baseline."""

    name = "integrated_gradients"
    title = "Integrated gradients"
    shows = (
        "Gradients summed along a path from a blank image to the photo (Sundararajan et al. 2017): "
        "red pixels raise the class score, blue ones lower it."
    )
    signal_names = ("completeness_gap",)
    Params = IntegratedGradientsParams
    signed = True
    units = "contribution to the target logit versus the baseline (summed over channels)"
    cost_hint = "lower steps"
    needs_twin = True
    anytime = True

    @classmethod
    def completeness_baseline(cls, x: np.ndarray, params: IntegratedGradientsParams) -> np.ndarray:
        return baseline_image(x, params.baseline)

    @classmethod
    def planned_passes(cls, params: IntegratedGradientsParams, side: tuple[int, int]) -> int:
        return sampled_passes(params.steps, params.batch_size)

    def _attribute(
        self,
        x: np.ndarray,
        objective: Objective,
        params: IntegratedGradientsParams,
        logits: np.ndarray,
    ) -> np.ndarray:
        baseline = torch.from_numpy(baseline_image(x, params.baseline)[None])
        if params.stop == "converged":
            return self._converged(x, baseline, objective, params)
        self.sampling = Sampling(params.steps, params.steps, params.stop)
        with input_gradients(
            self.model.twin, self.model.cancellation, score_head(objective)
        ) as logits_fn:
            method = _Reporting(logits_fn, self) if self.watched else None
            attributions = (method or CaptumIntegratedGradients(logits_fn)).attribute(
                as_batch(x),
                baselines=baseline,
                target=0,
                n_steps=params.steps,
                method=params.quadrature,
                internal_batch_size=params.batch_size,
            )
        return attributions.detach().sum(dim=1)[0].cpu().numpy()

    def _converged(
        self,
        x: np.ndarray,
        baseline: torch.Tensor,
        objective: Objective,
        params: IntegratedGradientsParams,
    ) -> np.ndarray:
        """``stop=converged``: midpoints in interleaved order until the split-half test holds."""
        difference = torch.from_numpy(x[None]) - baseline
        alphas = (interleaved(params.steps) + 0.5) / params.steps
        sums = torch.zeros((2, *x.shape), dtype=torch.float32)
        counts = [0, 0]

        def attribution(gradient_sum: torch.Tensor, count: int) -> np.ndarray:
            return (difference[0] * gradient_sum / count).sum(dim=0).numpy()

        used, agreement = params.steps, None
        with input_gradients(
            self.model.twin, self.model.cancellation, score_head(objective)
        ) as logits_fn:
            for start in range(0, params.steps, params.batch_size):
                stop = min(start + params.batch_size, params.steps)
                gradients = path_gradients(logits_fn, baseline, difference, alphas[start:stop])
                for side in range(2):
                    part = gradients[(side - start) % 2 :: 2]
                    sums[side] += part.sum(dim=0)
                    counts[side] += len(part)
                if self.watched and stop < params.steps:
                    self.report_partial(attribution(sums.sum(dim=0), stop))
                if stop < params.steps and min(counts) > 0:
                    reached, agreement = CONVERGENCE.reached(
                        stop, *(attribution(sums[side], counts[side]) for side in range(2))
                    )
                    if reached:
                        used = stop
                        break
        self.sampling = Sampling(used, params.steps, params.stop)
        if agreement is not None and used < params.steps:
            self.signals["split_half_agreement"] = agreement
        return attribution(sums.sum(dim=0), used)


def interleaved(count: int) -> np.ndarray:
    """``0..count-1`` in bit-reversed order (van der Corput): every prefix of it spreads over
    the whole range, so the path points visited so far cover the path evenly."""
    bits = max(1, math.ceil(math.log2(count)))
    reversed_bits = [int(format(i, f"0{bits}b")[::-1], 2) for i in range(2**bits)]
    return np.array([i for i in reversed_bits if i < count], dtype=np.float64)


def path_gradients(
    logits_fn: Any, baseline: torch.Tensor, difference: torch.Tensor, alphas: np.ndarray
) -> torch.Tensor:
    """The gradients ``(n, 3, H, W)`` of the score (the twin head's column 0) at the points
    ``baseline + alpha * difference`` of the path, one pass of the twin."""
    weights = torch.from_numpy(alphas.astype(np.float32))[:, None, None, None]
    points = (baseline + weights * difference).requires_grad_(True)
    (gradients,) = torch.autograd.grad(logits_fn(points)[:, 0].sum(), points)
    return gradients.detach()


class _Reporting(CaptumIntegratedGradients):
    """Integrated gradients that also report their estimate after each batch of path points
    (``Explainer.report_partial``): the step-weighted mean gradient over the points so far,
    times (input - baseline). Once every point is in, the weights sum to 1 and it is the
    attribution itself; the final map is captum's own sum."""

    def __init__(self, forward: Any, explainer: Explainer) -> None:
        super().__init__(forward)
        self.explainer = explainer
        self.total: torch.Tensor | None = None
        self.weight = 0.0

    def _attribute(self, *args: Any, **kwargs: Any) -> Any:
        attributions = super()._attribute(*args, **kwargs)
        steps = kwargs.get("step_sizes_and_alphas")
        if steps is not None:  # one batch of the path (captum's internal batching)
            batch = attributions[0].detach()
            self.total = batch if self.total is None else self.total + batch
            self.weight += float(sum(steps[0]))
            self.explainer.report_partial((self.total / self.weight).sum(dim=1)[0].numpy())
        return attributions
