"""Tensors for the gradient methods, and the shape of the methods that need one pass of the twin.

One input becomes a batch that requires grad (``as_batch``), input gradients a saliency map
(``channel_max_abs``). ``TwinPass`` is the base of the methods whose map comes from a single
forward and backward pass (plain gradient, Grad-CAM). The twin itself is driven through
``service.common.twin.input_gradients``.
"""

from __future__ import annotations

from abc import abstractmethod
from typing import Any

import numpy as np
import torch

from service.common.twin import input_gradients
from service.explain.base import Explainer, Prediction, resolve_target


def as_batch(x: np.ndarray) -> torch.Tensor:
    """``(3, H, W)`` float32 array as a fresh ``(1, 3, H, W)`` tensor that requires grad."""
    return torch.from_numpy(np.array(x[None], dtype=np.float32)).requires_grad_(True)


def channel_max_abs(attributions: torch.Tensor) -> np.ndarray:
    """``(1, 3, H, W)`` attributions -> ``(H, W)``: largest magnitude over channels (Simonyan
    et al. 2014)."""
    return attributions.detach().abs().amax(dim=1)[0].cpu().numpy()


class TwinPass(Explainer):
    """A method whose map needs one forward pass of the twin and the gradient of the target's
    logit through it. The forward pass does not depend on the target, so it runs while the
    prediction (which picks the default target and is the answer's prediction) runs on the
    inference thread; only the backward pass waits for it. Subclasses override ``_from_pass``.
    """

    needs_twin = True

    def _explain(
        self, x: np.ndarray, target: int | None, params: Any, prediction: Prediction
    ) -> tuple[np.ndarray, int, np.ndarray]:
        with input_gradients(self.model.twin):
            self.model.cancellation.batch()
            inputs = as_batch(x)
            twin_logits, activations = self.model.twin(inputs)
            logits = prediction.logits()
            target = resolve_target(target, len(logits), int(np.argmax(logits)))
            raw = self._from_pass(inputs, twin_logits[0, target], activations, params)
        return raw, target, logits

    def _attribute(self, x: np.ndarray, target: int, params: Any, logits: np.ndarray) -> np.ndarray:
        return self._explain(x, target, params, Prediction.known(logits))[0]

    @abstractmethod
    def _from_pass(
        self,
        inputs: torch.Tensor,
        score: torch.Tensor,
        activations: dict[str, torch.Tensor],
        params: Any,
    ) -> np.ndarray:
        """The raw ``(H, W)`` map from one pass: ``inputs`` ``(1, 3, H, W)`` (requires grad),
        ``score`` the target's logit computed from them, the twin's ``activations``."""
