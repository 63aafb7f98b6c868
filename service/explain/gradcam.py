"""Grad-CAM (Selvaraju et al. 2017) at one of the twin's activations.

The twin returns its activations, so no hooks: ``ReLU(sum_c mean_hw(d score / d A_c) * A_c)``
with the gradient from ``torch.autograd.grad``, upsampled (bilinear) to the input size.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from pydantic import Field

from service.errors import UnknownLayer
from service.explain.base import MethodParams
from service.explain.objective import Objective
from service.explain.twin import TwinPass


class GradCamParams(MethodParams):
    layer: str | None = Field(
        None,
        max_length=64,
        description="the twin's activation to use (default: meta.json's gradcam_layer)",
    )


class GradCam(TwinPass):
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
    signed = False
    units = "gradient-weighted activation of the layer for the target logit"

    @classmethod
    def check_names(cls, params: GradCamParams, layers: tuple[str, ...]) -> None:
        """``layer`` must be one of the twin's activations (checked before any work, and
        again by the pass for a caller that skipped it)."""
        if params.layer is not None:
            known_layer(params.layer, layers)

    def _from_pass(
        self,
        inputs: torch.Tensor,
        score: torch.Tensor,
        activations: dict[str, torch.Tensor],
        params: GradCamParams,
        objective: Objective,
    ) -> np.ndarray:
        layers = tuple(name for name, value in activations.items() if value.ndim == 4)
        layer = known_layer(params.layer or self.model.gradcam_layer, layers)
        activation = activations[layer]
        (gradient,) = torch.autograd.grad(score, activation)
        weights = gradient.mean(dim=(2, 3), keepdim=True)
        cam = F.relu((weights * activation.detach()).sum(dim=1, keepdim=True))
        cam = F.interpolate(cam, size=inputs.shape[2:], mode="bilinear", align_corners=False)
        return cam[0, 0].numpy()


def known_layer(layer: str | None, layers: tuple[str, ...]) -> str:
    """``layer`` if it is one of ``layers``, else ``UnknownLayer`` listing them."""
    if layer is None or layer not in layers:
        raise UnknownLayer(
            f"layer {layer!r} is not an activation of the model; valid: {', '.join(layers)}"
        )
    return layer
