"""Integrated gradients (Sundararajan et al. 2017) from a baseline image to the input."""

from __future__ import annotations

from typing import Literal

import numpy as np
import torch
from captum.attr import IntegratedGradients as CaptumIntegratedGradients
from pydantic import Field

from ..common.twin import input_gradients
from .base import Explainer, MethodParams
from .perturb import BASELINE_HELP, Baseline, baseline_image
from .twin import as_batch


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
    Params = IntegratedGradientsParams
    signed = True
    units = "contribution to the target logit versus the baseline (summed over channels)"
    needs_twin = True

    def _attribute(
        self, x: np.ndarray, target: int, params: IntegratedGradientsParams, logits: np.ndarray
    ) -> np.ndarray:
        baseline = torch.from_numpy(baseline_image(x, params.baseline)[None])
        with input_gradients(self.model.twin, self.model.cancellation) as logits_fn:
            attributions = CaptumIntegratedGradients(logits_fn).attribute(
                as_batch(x),
                baselines=baseline,
                target=target,
                n_steps=params.steps,
                method=params.quadrature,
                internal_batch_size=params.batch_size,
            )
        return attributions.detach().sum(dim=1)[0].cpu().numpy()
