"""FastSHAP (Jethani et al., ICLR 2022): Shapley values of a grid of the face, in one pass.

The bundle's explainer (``one_pass.onnx``, trained by ``python -m training one-pass``) maps the
model input to a value per class and per cell of a ``G x G`` grid of the aligned face. Its
value function is the model's logits with the hidden cells at the deletion baseline (model
input 0), so the cells' values of a class add up, by ``efficient``, to that class's logit on
the face minus its logit on the baseline image; a contrast's map is exactly the difference of
the two classes' maps. The open-set score is not a logit the explainer learned: ``target=
open_set`` is 422 ``open_set_unavailable``. The grid is laid on the model input bilinearly
(cell centres), like Grad-CAM's 8x8 maps.

Cost: one pass where the explainer is grafted onto the served graph (the prediction and the
map from the same run), else the prediction and one pass of the explainer beside it (the model's
trunk up to one stage and a small head: docs/explanations.md#one-pass-shapley-values-fastshap);
no sampling.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Literal, TypeVar

import numpy as np
import torch
import torch.nn.functional as F
from scipy.special import log_softmax

from service.errors import OpenSetUnavailable
from service.explain.base import Explainer, NoParams, Prediction
from service.explain.objective import Objective, Question

ArrayT = TypeVar("ArrayT", np.ndarray, torch.Tensor)
Value = Literal["logit", "log_probability"]
"""What the explainer's values share out: each class's logit, or its log-probability
(``log softmax``); a contrast of either is the logit gap."""


@dataclass(frozen=True)
class OnePassModel:
    """The bundle's one-pass explainer as the method uses it.

    - ``run``: ``(N, 3, H, W)`` float32 model input -> ``(N, C, G, G)`` raw cell values (the
      ONNX session's output, before ``efficient``);
    - ``baseline_logits``: ``(C,)`` the model's logits on the deletion baseline image (every
      cell hidden), what the values of a face add up from;
    - ``grid``: ``G``;
    - ``value``: what the values of a class add up to (``Value``);
    - ``predict``: where the explainer is grafted onto the served graph
      (``service.inference.one_pass_graph``), ``run`` with the model's ``(N, C)`` logits from
      the same single pass; None where it runs on its own beside the prediction;
    - ``how``: which of the two, in words (``GET /model``).
    """

    run: Callable[[np.ndarray], np.ndarray]
    baseline_logits: np.ndarray
    grid: int
    value: Value = "logit"
    predict: Callable[[np.ndarray], tuple[np.ndarray, np.ndarray]] | None = None
    how: str = ""


def class_values(logits: ArrayT, value: Value) -> ArrayT:
    """``(..., C)`` logits as the ``value`` the explainer shares out, per class."""
    if value == "logit":
        return logits
    if isinstance(logits, torch.Tensor):
        return torch.log_softmax(logits, dim=-1)
    return np.asarray(log_softmax(logits, axis=-1))


def efficient(raw: ArrayT, gain: ArrayT) -> ArrayT:
    """FastSHAP's additive efficient normalisation: ``raw`` ``(..., d)`` cell values plus an
    equal share of what they miss of ``gain`` ``(...)`` (a logit's change from the baseline
    image to the face), so that they sum to it. Numpy or torch (training's loss uses it)."""
    missing = gain - raw.sum(-1)
    return raw + missing[..., None] / raw.shape[-1]


class FastShap(Explainer):
    """Signed, [-1, 1]: each grid cell's Shapley value for the target's centred logit (its logit
    minus the mean of the classes' logits; hidden cells at model input 0), bilinear between the
    cells' centres, divided by the largest magnitude."""

    name = "fastshap"
    title = "FastSHAP (one pass)"
    shows = (
        "A network trained on this model to predict each face region's Shapley value for every "
        "class in one pass (Jethani et al. 2022): red where the region raises the class score, "
        "blue where it lowers it, on a grid of the face."
    )
    Params = NoParams
    signed = True
    units = (
        "Shapley value of the grid cell for the target's centred logit (its logit minus the "
        "classes' mean; hidden: model input 0)"
    )
    needs_one_pass = True
    explains_open_set = False

    def _start_prediction(self, x: np.ndarray, question: Question) -> Prediction:
        """Grafted: the one pass that gives the map gives the prediction too."""
        one_pass: OnePassModel = self.model.one_pass  # checked by Explainer.__init__
        if question.open_set:
            raise OpenSetUnavailable(
                "fastshap explains class logits, not the open-set score; ask another method "
                "for target=open_set"
            )
        if one_pass.predict is None:
            return super()._start_prediction(x, question)
        self.model.cancellation.batch()  # the one pass, counted as every pass is
        values, logits = one_pass.predict(x[None])
        self._raw = np.asarray(values, dtype=np.float64)[0]
        return Prediction.known(logits[0])

    def _explain(
        self, x: np.ndarray, question: Question, params: Any, prediction: Prediction
    ) -> tuple[np.ndarray, Objective, np.ndarray]:
        one_pass: OnePassModel = self.model.one_pass
        if one_pass.predict is None:
            self.model.cancellation.batch()  # the explainer's pass, counted as every pass is
            # runs here while the prediction runs on the inference thread
            self._raw = np.asarray(one_pass.run(x[None]), dtype=np.float64)[0]
        return super()._explain(x, question, params, prediction)

    def _attribute(
        self, x: np.ndarray, objective: Objective, params: Any, logits: np.ndarray
    ) -> np.ndarray:
        one_pass: OnePassModel = self.model.one_pass
        classes, grid = len(logits), one_pass.grid
        gain = class_values(np.asarray(logits, np.float64), one_pass.value) - class_values(
            np.asarray(one_pass.baseline_logits, np.float64), one_pass.value
        )
        values = efficient(self._raw.reshape(classes, grid * grid), gain)
        # a contrast's difference needs no centring: the classes' mean cancels in it
        other = values.mean(axis=0) if objective.contrast is None else values[objective.contrast]
        cells = values[objective.target] - other
        return upsampled(cells.reshape(grid, grid), x.shape[1:])


def upsampled(cells: np.ndarray, side: tuple[int, int]) -> np.ndarray:
    """A ``(G, G)`` grid -> ``(H, W)``, bilinear between cell centres (borders held)."""
    grid = torch.from_numpy(np.ascontiguousarray(cells, dtype=np.float64))[None, None]
    return F.interpolate(grid, size=side, mode="bilinear", align_corners=False)[0, 0].numpy()
