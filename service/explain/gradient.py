"""Gradient saliency (Simonyan et al. 2014): |d score / d pixel|, largest over channels."""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from service.explain.twin import TwinPass, channel_max_abs


class GradientSaliency(TwinPass):
    """Unsigned, [0, 1]: gradient magnitude of the target logit, divided by its maximum."""

    name = "gradient"
    title = "Gradient"
    shows = (
        "The gradient of the class score with respect to every pixel (Simonyan et al. 2014): "
        "bright pixels are those where a tiny change would move the score the most."
    )
    signed = False
    units = "|d target logit / d input value|, largest over channels"

    def _from_pass(
        self,
        inputs: torch.Tensor,
        score: torch.Tensor,
        activations: dict[str, torch.Tensor],
        params: Any,
    ) -> np.ndarray:
        (gradient,) = torch.autograd.grad(score, inputs)
        return channel_max_abs(gradient)
