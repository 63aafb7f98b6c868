"""LayerCAM (Jiang et al., IEEE TIP 2021) at one of the twin's activations.

Grad-CAM weighs each feature map by the *average* of its gradient, one number per channel, so a
channel that helps the score in one place and hurts it in another counts once, with the
average's sign. LayerCAM weighs every location by its own positive gradient,
``ReLU(sum_c ReLU(d score / d A_c) * A_c)``, which keeps the map's detail at shallow layers,
where Grad-CAM's channel averages blur it away. By default it reads the deepest activation at
the finest resolution (``finest_layer``: for the face ResNet ``layer1``, 35 x 35, against
Grad-CAM's 8 x 8 ``layer3``); bench/results/contrast.md measured why: its maps of a contrast and
of the open-set score pass the deletion test where Grad-CAM's do not.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from pydantic import Field

from service.explain.base import MethodParams
from service.explain.gradcam import known_layer
from service.explain.objective import Objective
from service.explain.twin import TwinPass


class LayerCamParams(MethodParams):
    layer: str | None = Field(
        None,
        max_length=64,
        description="the twin's activation to use (default: the deepest one at the finest "
        "resolution)",
    )


def finest_layer(activations: dict[str, torch.Tensor]) -> str:
    """The deepest of the ``(N, C, H, W)`` ``activations`` (in the twin's order, input first)
    whose ``H * W`` is the largest."""
    maps = [(name, value) for name, value in activations.items() if value.ndim == 4]
    largest = max(value.shape[2] * value.shape[3] for _, value in maps)
    return [name for name, value in maps if value.shape[2] * value.shape[3] == largest][-1]


class LayerCam(TwinPass):
    """Unsigned, [0, 1]: the layer's positively weighted activation divided by its maximum
    (all zero where nothing supports the score)."""

    name = "layercam"
    title = "LayerCAM"
    shows = (
        "The feature maps of an early convolutional layer, each location weighted by the "
        "score's own positive gradient there, then summed (Jiang et al. 2021): a finer map "
        "than Grad-CAM of where the network found support for the answer."
    )
    Params = LayerCamParams
    signed = False
    units = "positive-gradient-weighted activation of the layer for the target logit"

    @classmethod
    def check_names(cls, params: LayerCamParams, layers: tuple[str, ...]) -> None:
        if params.layer is not None:
            known_layer(params.layer, layers)

    def _from_pass(
        self,
        inputs: torch.Tensor,
        score: torch.Tensor,
        activations: dict[str, torch.Tensor],
        params: LayerCamParams,
        objective: Objective,
    ) -> np.ndarray:
        layers = tuple(name for name, value in activations.items() if value.ndim == 4)
        layer = known_layer(params.layer or finest_layer(activations), layers)
        activation = activations[layer]
        (gradient,) = torch.autograd.grad(score, activation)
        cam = F.relu((F.relu(gradient) * activation.detach()).sum(dim=1, keepdim=True))
        cam = F.interpolate(cam, size=inputs.shape[2:], mode="bilinear", align_corners=False)
        return cam[0, 0].numpy()
