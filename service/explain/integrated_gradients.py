"""Integrated gradients (Sundararajan et al. 2017) from a baseline image to the input."""

from __future__ import annotations

from typing import Any, Literal

import numpy as np
import torch
from captum.attr import IntegratedGradients as CaptumIntegratedGradients
from pydantic import Field

from service.common.twin import input_gradients
from service.explain.base import Explainer, MethodParams, sampled_passes
from service.explain.objective import Objective
from service.explain.perturb import BASELINE_HELP, Baseline, baseline_image
from service.explain.twin import as_batch, score_head


class IntegratedGradientsParams(MethodParams):
    steps: int = Field(32, ge=2, le=256, description="points on the path from baseline to input")
    baseline: Baseline = Field("zero", description="the path's start: " + BASELINE_HELP)
    batch_size: int = Field(16, ge=1, le=128, description="path points per forward/backward pass")
    quadrature: Literal["gausslegendre", "riemann_trapezoid"] = Field(
        "gausslegendre", description="quadrature rule along the path"
    )


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
