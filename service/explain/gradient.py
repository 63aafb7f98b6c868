"""Gradient saliency (Simonyan et al. 2014): |d score / d pixel|, largest over channels."""

from __future__ import annotations

import numpy as np
from captum.attr import Saliency

from ..common.twin import input_gradients
from .base import Explainer, MethodParams
from .twin import as_batch, channel_max_abs


class GradientSaliency(Explainer):
    """Unsigned, [0, 1]: gradient magnitude of the target logit, divided by its maximum."""

    name = "gradient"
    title = "Gradient"
    shows = (
        "The gradient of the class score with respect to every pixel (Simonyan et al. 2014): "
        "bright pixels are those where a tiny change would move the score the most."
    )
    signed = False
    units = "|d target logit / d input value|, largest over channels"
    needs_twin = True

    def _attribute(
        self, x: np.ndarray, target: int, params: MethodParams, logits: np.ndarray
    ) -> np.ndarray:
        with input_gradients(self.model.twin, self.model.cancellation) as logits_fn:
            gradients = Saliency(logits_fn).attribute(as_batch(x), target=target, abs=True)
        return channel_max_abs(gradients)
