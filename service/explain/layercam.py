"""LayerCAM (Jiang et al., IEEE TIP 2021) at one of the twin's activations.

Grad-CAM weighs each feature map by the *average* of its gradient, one number per channel, so a
channel that helps the score in one place and hurts it in another counts once, with the
average's sign. LayerCAM weighs every location by its own positive gradient,
``ReLU(sum_c ReLU(d score / d A_c) * A_c)``, which keeps the map's detail at shallow layers,
where Grad-CAM's channel averages blur it away. By default it reads the deepest activation at
the finest resolution (``finest_layer``: for the face ResNet ``layer1``, 35 x 35, against
Grad-CAM's 8 x 8 ``layer3``); bench/results/contrast.md measured why.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from pydantic import Field

from service.explain.base import MethodParams
from service.explain.cam import ActivationMap


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


class LayerCam(ActivationMap):
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
    units = "positive-gradient-weighted activation of the layer for the target logit"

    def default_layer(self, activations: dict[str, torch.Tensor]) -> str | None:
        return finest_layer(activations)

    @staticmethod
    def weigh(gradient: torch.Tensor, activation: torch.Tensor) -> torch.Tensor:
        return F.relu((F.relu(gradient) * activation).sum(dim=1, keepdim=True))
