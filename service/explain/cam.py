"""Class activation maps: one of the twin's activations, weighted by the score's gradient at it.

``ActivationMap`` is the pipeline (the layer, its gradient, the weighting, the upsampling to the
input, bilinear); a method says only which layer it reads by default (``default_layer``) and how
it weighs the activation by the gradient (``weigh``): ``gradcam.py``, ``layercam.py``.
"""

from __future__ import annotations

from abc import abstractmethod
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from service.errors import UnknownLayer
from service.explain.objective import Objective
from service.explain.twin import TwinPass


def known_layer(layer: str | None, layers: tuple[str, ...]) -> str:
    """``layer`` if it is one of ``layers``, else ``UnknownLayer`` listing them."""
    if layer is None or layer not in layers:
        raise UnknownLayer(
            f"layer {layer!r} is not an activation of the model; valid: {', '.join(layers)}"
        )
    return layer


class ActivationMap(TwinPass):
    """Unsigned, [0, 1]: the weighted activation divided by its maximum (all zero where nothing
    supports the score). Its ``Params`` have a ``layer`` (None: ``default_layer``)."""

    signed = False

    @classmethod
    def check_names(cls, params: Any, layers: tuple[str, ...]) -> None:
        """``layer`` must be one of the twin's activations (checked before any work, and
        again by the pass for a caller that skipped it)."""
        if params.layer is not None:
            known_layer(params.layer, layers)

    @abstractmethod
    def default_layer(self, activations: dict[str, torch.Tensor]) -> str | None:
        """The activation read when the request names none."""

    @staticmethod
    @abstractmethod
    def weigh(gradient: torch.Tensor, activation: torch.Tensor) -> torch.Tensor:
        """``(1, C, h, w)`` gradient and activation -> the ``(1, 1, h, w)`` map."""

    def _from_pass(
        self,
        inputs: torch.Tensor,
        score: torch.Tensor,
        activations: dict[str, torch.Tensor],
        params: Any,
        objective: Objective,
    ) -> np.ndarray:
        layers = tuple(name for name, value in activations.items() if value.ndim == 4)
        layer = known_layer(params.layer or self.default_layer(activations), layers)
        activation = activations[layer]
        (gradient,) = torch.autograd.grad(score, activation)
        cam = self.weigh(gradient, activation.detach())
        cam = F.interpolate(cam, size=inputs.shape[2:], mode="bilinear", align_corners=False)
        return cam[0, 0].numpy()
