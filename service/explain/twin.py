"""Tensors for the gradient methods, and the shape of the methods that need one pass of the twin.

One input becomes a batch that requires grad (``as_batch``), input gradients a saliency map
(``channel_max_abs``). ``TwinPass`` is the base of the methods whose map comes from a single
forward and backward pass (plain gradient, Grad-CAM). The twin itself is driven through
``service.common.twin.input_gradients``.
"""

from __future__ import annotations

from abc import abstractmethod
from collections.abc import Callable
from typing import Any, TypeVar

import numpy as np
import torch

from service.common.twin import Head, input_gradients, on_one_face_thread
from service.errors import OpenSetUnavailable
from service.explain.base import Explainer, Prediction
from service.explain.objective import EMBEDDING, Objective, Question, resolve

T = TypeVar("T")


def as_batch(x: np.ndarray) -> torch.Tensor:
    """``(3, H, W)`` float32 array as a fresh ``(1, 3, H, W)`` tensor that requires grad."""
    return torch.from_numpy(np.array(x[None], dtype=np.float32)).requires_grad_(True)


def channel_max_abs(attributions: torch.Tensor) -> np.ndarray:
    """``(1, 3, H, W)`` attributions -> ``(H, W)``: largest magnitude over channels (Simonyan
    et al. 2014)."""
    return attributions.detach().abs().amax(dim=1)[0].cpu().numpy()


def times_input(gradients: torch.Tensor, x: np.ndarray) -> np.ndarray:
    """``(1, 3, H, W)`` gradients -> ``(H, W)``: gradient times input, summed over channels
    (Shrikumar et al. 2016), the first-order change of the score when a pixel goes to model
    input 0 (the deletion baseline): signed, positive where the pixel raises the score."""
    return (gradients.detach()[0].cpu().numpy() * x).sum(axis=0)


CONTRAST_UNITS = (
    "gradient of logit(target) - logit(contrast) times the input, summed over channels: "
    "positive pixels favour the target over the contrast"
)


class TwinPass(Explainer):
    """A method whose map needs one forward pass of the twin and the gradient of the target's
    logit through it. The forward pass does not depend on the target, so it runs while the
    prediction (which picks the default target and is the answer's prediction) runs on the
    inference thread; only the backward pass waits for it. The pass runs on the one-face thread
    (``service.common.twin.on_one_face_thread``: torch on one thread, the other cores left to the
    prediction and to other requests). Subclasses override ``_from_pass``.
    """

    needs_twin = True

    def _explain(
        self, x: np.ndarray, question: Question, params: Any, prediction: Prediction
    ) -> tuple[np.ndarray, Objective, np.ndarray]:
        def finish(inputs: torch.Tensor, outputs: Any) -> tuple[np.ndarray, Objective, np.ndarray]:
            logits = prediction.logits()
            objective = resolve(question, logits, self.model.open_set)
            return self._from_outputs(inputs, outputs, objective, params), objective, logits

        return self._on_twin(x, finish)

    def _attribute(
        self, x: np.ndarray, objective: Objective, params: Any, logits: np.ndarray
    ) -> np.ndarray:
        return self._on_twin(
            x, lambda inputs, outputs: self._from_outputs(inputs, outputs, objective, params)
        )

    def _on_twin(self, x: np.ndarray, then: Callable[[torch.Tensor, Any], T]) -> T:
        """One pass of the twin on ``x`` on the one-face thread: its forward pass, then
        ``then(inputs, outputs)`` (the backward pass), inside ``input_gradients``."""

        def one_pass() -> T:
            with input_gradients(self.model.twin):
                self.model.cancellation.batch()
                inputs = as_batch(x)
                return then(inputs, self.model.twin(inputs))

        return on_one_face_thread(one_pass)

    def _from_outputs(
        self, inputs: torch.Tensor, outputs: Any, objective: Objective, params: Any
    ) -> np.ndarray:
        twin_logits, activations = outputs
        score = objective.differentiable(twin_logits, twin_embedding(objective, activations))
        return self._from_pass(inputs, score[0], activations, params, objective)

    @abstractmethod
    def _from_pass(
        self,
        inputs: torch.Tensor,
        score: torch.Tensor,
        activations: dict[str, torch.Tensor],
        params: Any,
        objective: Objective,
    ) -> np.ndarray:
        """The raw ``(H, W)`` map from one pass: ``inputs`` ``(1, 3, H, W)`` (requires grad),
        ``score`` the ``objective``'s score computed from them, the twin's ``activations``."""


def twin_embedding(objective: Objective, outputs: dict[str, torch.Tensor]) -> torch.Tensor | None:
    """The embedding among the twin's ``outputs`` when ``objective``'s score needs it;
    ``OpenSetUnavailable`` for a twin without one (an older bundle: ``python -m training
    twin`` re-exports it)."""
    if not objective.needs_rows:
        return None
    if EMBEDDING not in outputs:
        raise OpenSetUnavailable(
            "this bundle's twin has no embedding output, which gradient maps of the open-set "
            "score need; use a perturbation method (occlusion, lime, rise) or re-export the "
            "twin (python -m training twin)"
        )
    return outputs[EMBEDDING]


def score_head(objective: Objective) -> Head:
    """``objective``'s score as the twin's captum head: ``(N, 1)``, differentiated as captum's
    target 0 (the class's logit column, the contrast's gap, the open-set score's log-odds)."""

    def head(logits: torch.Tensor, activations: dict[str, torch.Tensor]) -> torch.Tensor:
        return objective.differentiable(logits, twin_embedding(objective, activations))[:, None]

    return head
