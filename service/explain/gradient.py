"""Gradient saliency (Simonyan et al. 2014): |d score / d pixel|, largest over channels; for a
contrast, signed: gradient times input (``twin.times_input``)."""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from service.explain.objective import Objective, Question
from service.explain.twin import CONTRAST_UNITS, TwinPass, channel_max_abs, times_input


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

    @classmethod
    def signed_for(cls, question: Question) -> bool:
        return question.contrast is not None

    @classmethod
    def units_for(cls, question: Question) -> str:
        return CONTRAST_UNITS if question.contrast is not None else cls.units

    def _from_pass(
        self,
        inputs: torch.Tensor,
        score: torch.Tensor,
        activations: dict[str, torch.Tensor],
        params: Any,
        objective: Objective,
    ) -> np.ndarray:
        (gradient,) = torch.autograd.grad(score, inputs)
        if objective.kind == "contrast":
            return times_input(gradient, inputs.detach()[0].numpy())
        return channel_max_abs(gradient)
