"""Grad-CAM (Selvaraju et al. 2017) at one of the twin's activations.

The twin returns its activations, so no hooks: ``ReLU(sum_c mean_hw(d score / d A_c) * A_c)``
with the gradient from ``torch.autograd.grad``, upsampled (bilinear) to the input size
(``cam.ActivationMap``).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from pydantic import Field

from service.explain.base import MethodParams
from service.explain.cam import ActivationMap


class GradCamParams(MethodParams):
    layer: str | None = Field(
        None,
        max_length=64,
        description="the twin's activation to use (default: meta.json's gradcam_layer)",
    )


class GradCam(ActivationMap):
    """Unsigned, [0, 1]: the class activation map divided by its maximum (all zero where no
    channel supports the target)."""

    name = "gradcam"
    title = "Grad-CAM"
    shows = (
        "The feature maps of a late convolutional layer, each weighted by the class score's "
        "average gradient over it, then summed (Selvaraju et al. 2017): a coarse map of where the "
        "network looked."
    )
    Params = GradCamParams
    units = "gradient-weighted activation of the layer for the target logit"

    def default_layer(self, activations: dict[str, torch.Tensor]) -> str | None:
        return self.model.gradcam_layer

    @staticmethod
    def weigh(gradient: torch.Tensor, activation: torch.Tensor) -> torch.Tensor:
        weights = gradient.mean(dim=(2, 3), keepdim=True)
        return F.relu((weights * activation).sum(dim=1, keepdim=True))
