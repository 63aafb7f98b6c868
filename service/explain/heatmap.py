"""The result of every explanation method.

A ``Heatmap`` is computed in model-input coordinates: one value per pixel of the ``(H, W)``
image the model saw (the aligned face crop, resized). ``AlignedFace.to_image`` lays it back onto
the upload, through the same transform that cut the crop out of it (rotation and scale too).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np
from scipy.stats import spearmanr

from service.common.softmax import softmax
from service.explain.objective import Objective

if TYPE_CHECKING:
    from service.explain.convergence import Sampling

NEGLIGIBLE_SCALE = 1e-4
"""A map whose largest raw magnitude is below this holds no evidence.

Every method's units are the target's score -- a logit or a probability (occlusion, LIME,
integrated gradients, Grad-CAM) or its change per unit of model input, which spans about 1 (the
gradients) -- so one threshold serves all. 1e-4 is the tolerance the bundle's load check allows
between the ONNX model and its twin on the same input (``parity_tolerance``): differences below
it are what the service already accepts as "the same model", rounding noise. Measured with the
default bundle: on a flat black or white image, integrated gradients, occlusion and LIME with
the image's own mean colour as baseline reach 3e-8 to 7e-7 (0 with the blur baseline); on 12
real test faces every method at its defaults is above 2.8e-2. The threshold sits 2 orders of
magnitude from each.
"""


@dataclass(frozen=True)
class Heatmap:
    """One explanation of one image for one class.

    ``values`` is ``(H, W)`` float32 in model-input coordinates, read-only. Its convention:

    - ``signed=False``: values in ``value_range`` (``(0, 1)``), larger = more important.
    - ``signed=True``: values in ``value_range`` (``(-1, 1)``); positive = evidence *for*
      ``target`` (removing it lowers the class score), negative = evidence against it.

    Every method divides its raw values by their largest magnitude ``scale``:
    ``values * scale`` are in ``units`` (e.g. "drop of the target probability") -- unless the
    map is ``negligible`` (``scale < NEGLIGIBLE_SCALE``): then ``values`` are the raw values,
    all about 0, because stretching numerical noise to full strength would show a confident
    map where there is no evidence (``scaled`` decides).
    ``logits`` are the model's logits for the unperturbed input, ``(C,)`` float32.
    ``signals`` are the method's own measures of how far to trust the map, from the work it did
    anyway (``service.explain.quality`` reads them): ``split_half_agreement`` (a sampling
    method's two halves of samples), ``surrogate_r2`` (LIME's fit).
    """

    values: np.ndarray
    method: str
    target: int
    signed: bool
    value_range: tuple[float, float]
    units: str
    scale: float
    logits: np.ndarray
    params: dict[str, Any] = field(default_factory=dict)
    negligible: bool = False
    signals: dict[str, float] = field(default_factory=dict)
    objective: Objective | None = None
    """what the map explains (``service.explain.objective``); None: class ``target``'s score"""
    sampling: Sampling | None = None
    """how much of its sample budget a sampling method used (``stop``); None for the others"""

    def __post_init__(self) -> None:
        if self.values.ndim != 2:
            raise ValueError(f"heatmap values must be (H, W), got shape {self.values.shape}")
        values = np.ascontiguousarray(self.values, dtype=np.float32)
        values.setflags(write=False)  # heatmaps are shared through the cache
        object.__setattr__(self, "values", values)

    @property
    def shape(self) -> tuple[int, int]:
        return self.values.shape

    @property
    def probabilities(self) -> np.ndarray:
        """``(C,)`` float64 softmax of ``logits``."""
        return softmax(self.logits)

    @property
    def predicted(self) -> int:
        return int(np.argmax(self.logits))

    @property
    def explains(self) -> Objective:
        """The objective the map explains (``objective``, or class ``target``'s score)."""
        return self.objective or Objective("class", self.target)


def scaled(raw: np.ndarray, value_range: tuple[float, float]) -> tuple[np.ndarray, float, bool]:
    """``raw`` ``(H, W)`` divided by its largest magnitude and clipped to ``value_range``, that
    magnitude (``scale``), and whether the map is negligible: then the values are ``raw``
    itself (clipped), not stretched."""
    scale = float(np.max(np.abs(raw)))
    negligible = scale < NEGLIGIBLE_SCALE
    values = raw if negligible else raw / scale
    return np.clip(values, *value_range), scale, negligible  # unsigned: cuts rounding below 0


def split_half_agreement(first: np.ndarray, second: np.ndarray) -> float:
    """Spearman rank correlation of two estimates of one map (from two halves of a sampling
    method's samples); 0 where either is constant (nothing to rank)."""
    a, b = np.ravel(first), np.ravel(second)
    if np.ptp(a) == 0 or np.ptp(b) == 0:
        return 0.0
    return float(spearmanr(a, b).statistic)
