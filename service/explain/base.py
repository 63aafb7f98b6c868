"""The one interface of every explanation method.

A method is a subclass of ``Explainer`` that sets four class attributes and overrides
``_attribute``; ``attribute`` does everything else (input and parameter checks, the default
target, packing the result as a ``Heatmap``)::

    explainer = Occlusion(handle)
    heatmap = explainer.attribute(x, target=3, window=24)   # x: (3, H, W) float32 model input

Parameters are a pydantic model per method (``Params``): defaults and upper bounds are data,
so the HTTP layer turns them into query parameters and out-of-range values into 422s. A
``MethodCall`` is a method with its parameters checked once; ``Explainer.run`` takes them as
they are, and ``Explainer.planned_passes`` says how many forward passes they will cost.

Forward passes are the cost unit of a request: a pass is one batch through the model (ONNX or
the twin, forward and, for the gradient methods, backward), at the methods' own batch sizes.
Checked against ``CallBounds`` (the model's layers, its input side, ``max_passes_per_request``),
a call that names a layer the model lacks is 422 ``unknown_layer`` and one that plans more
passes than allowed 422 ``too_costly``, before any work is queued: every way of asking (the
synchronous routes, a job) checks the same ``MethodCall.of``.
"""

from __future__ import annotations

import math
from abc import ABC, abstractmethod
from collections.abc import Callable, Mapping
from concurrent.futures import Future
from dataclasses import dataclass, field
from typing import Any, ClassVar

import numpy as np
from pydantic import BaseModel, ConfigDict

from service.common.cancellation import Cancellation
from service.errors import MethodUnavailable, TooCostly
from service.explain.convergence import Sampling
from service.explain.heatmap import Heatmap, scaled
from service.explain.objective import (
    Objective,
    OpenSetScore,
    Question,
    Rows,
    Score,
    resolve,
)

Forward = Callable[[np.ndarray], np.ndarray]
"""A batched forward pass: ``(N, 3, H, W)`` float32 model input -> ``(N, C)`` logits (for
example an ONNX Runtime session's run)."""

ForwardSoon = Callable[[np.ndarray], Future[np.ndarray]]
"""``Forward`` started elsewhere (the engine's inference thread): returns a future at once."""

UNSIGNED_RANGE = (0.0, 1.0)
SIGNED_RANGE = (-1.0, 1.0)
# The passes of a method without samples: the prediction, then one pass of its own.
SINGLE_PASS = 2


class MethodParams(BaseModel):
    """Base of every method's parameters: unknown names are errors, instances are immutable."""

    model_config = ConfigDict(extra="forbid", frozen=True)


class NoParams(MethodParams):
    """A method without parameters of its own."""


@dataclass(frozen=True)
class ModelHandle:
    """What the methods may use of a model, for one piece of work.

    - ``forward``: the batched forward function (ONNX); perturbation methods only use this.
    - ``twin``: the differentiable torch module, ``(N, 3, H, W) -> (logits, {layer: (N, C_l,
      H_l, W_l)})``; gradient methods use it. ``None`` where only perturbation methods run.
    - ``gradcam_layer``: the twin's activation that Grad-CAM uses by default (meta.json).
    - ``cancellation``: checked between batches (perturbation batches, the twin's passes); once
      cancelled, ``attribute`` raises ``Cancelled`` at the next batch. A request's is cancelled
      when its client hangs up; the default never is.
    - ``report``: called with the map as it stands after each batch of a sampling method (LIME,
      occlusion, RISE, SmoothGrad, integrated gradients), scaled like the final map (values,
      scale, negligible): an anytime estimate for whoever watches the work (a job's live view).
      None: nobody watches, and no partial map is computed.
    - ``forward_soon``: ``forward`` that returns at once with a future, for the prediction that
      a method may overlap with work of its own (``Prediction``); None: the prediction runs
      through ``forward`` when it is read.
    - ``rows``: ``forward`` with the embedding too, and ``open_set`` the model's open-set
      score: what a map of that score needs (``Objective``); None where the model has none.
    - ``one_pass``: the bundle's one-pass explainer (``service.explain.one_pass.OnePassModel``)
      that ``fastshap`` runs; None where the bundle has none.
    """

    forward: Forward
    twin: Any = None
    gradcam_layer: str | None = None
    cancellation: Cancellation = field(default_factory=Cancellation)
    forward_soon: ForwardSoon | None = None
    report: Callable[[np.ndarray, float, bool], None] | None = None
    rows: Rows | None = None
    open_set: OpenSetScore | None = None
    one_pass: Any = None


class Prediction:
    """The model's ``(C,)`` float32 logits for one input: the answer's prediction, whose argmax
    is the default target. ``start`` queues it at once where the model has ``forward_soon`` (it
    runs on the inference thread while the method does the work that needs no target), else it
    runs through ``forward`` when first read."""

    def __init__(self, read: Callable[[], np.ndarray]) -> None:
        self._read = read
        self._logits: np.ndarray | None = None

    @classmethod
    def start(cls, model: ModelHandle, x: np.ndarray) -> Prediction:
        if model.forward_soon is not None:
            return cls(model.forward_soon(x[None]).result)
        return cls(lambda: model.forward(x[None]))

    @classmethod
    def known(cls, logits: np.ndarray) -> Prediction:
        return cls(lambda: logits[None])

    def logits(self) -> np.ndarray:
        if self._logits is None:
            self._logits = np.asarray(self._read(), dtype=np.float32)[0]
        return self._logits


class Explainer(ABC):
    """Base class: subclasses declare what they are (``name``, ``title``, ``shows``,
    ``signed``, ``units``, ``needs_twin``, ``Params``: ``GET /explain`` lists exactly these)
    and override ``_attribute``, which returns raw values; ``attribute`` scales them by their
    largest magnitude into ``value_range``: ``(0, 1)`` unsigned, ``(-1, 1)`` signed (unless
    the map is negligible, see ``heatmap.scaled``)."""

    name: ClassVar[str]
    title: ClassVar[str]
    """Display name (the page's panel title)."""
    shows: ClassVar[str]
    """What the map shows, in one or two sentences for people."""
    Params: ClassVar[type[MethodParams]] = NoParams
    signed: ClassVar[bool]
    units: ClassVar[str]
    needs_twin: ClassVar[bool] = False
    anytime: ClassVar[bool] = False
    """Whether the method refines its map as it samples and reports it (``report_partial``):
    the page runs it as a job and draws the map as it comes."""
    signal_names: ClassVar[tuple[str, ...]] = ()
    """The names of the ``signals`` its maps carry (``Heatmap.signals``)."""
    quality_by_default: ClassVar[bool] = False
    """Whether its answers carry a quality report unless asked not to (``quality=false``):
    where grading adds at most about a third to the method's time (docs/explanations.md)."""
    value_range: ClassVar[tuple[float, float]]
    """Set from ``signed``."""
    cost_hint: ClassVar[str] = ""
    """Which parameters to change for fewer passes (a ``too_costly`` answer says it)."""
    needs_one_pass: ClassVar[bool] = False
    """Whether it runs the bundle's one-pass explainer (``ModelHandle.one_pass``)."""
    explains_open_set: ClassVar[bool] = True
    """Whether it can explain the open-set score (``target=open_set``) where the model has one."""

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        if hasattr(cls, "signed"):
            cls.value_range = SIGNED_RANGE if cls.signed else UNSIGNED_RANGE

    @classmethod
    def signed_for(cls, question: Question) -> bool:
        """Whether its map of ``question`` is signed: ``signed``, unless the method makes a
        signed map of a contrast only (gradient, SmoothGrad: a magnitude cannot say whether a
        pixel speaks for the target or for the contrast)."""
        return cls.signed

    @classmethod
    def units_for(cls, question: Question) -> str:
        """``units`` of its map of ``question`` (where ``signed_for`` changes them)."""
        return cls.units

    def __init__(self, model: ModelHandle) -> None:
        if self.needs_twin and model.twin is None:
            raise ValueError(f"{self.name} needs the model's differentiable twin")
        if self.needs_one_pass and model.one_pass is None:
            raise ValueError(
                f"{self.name} needs the bundle's one-pass explainer, and this model has none "
                "(make it with 'python -m training one-pass --bundle DIR')"
            )
        self.model = model
        self.signals: dict[str, float] = {}
        self.map_range = self.value_range
        """the value range of the map being made (``signed_for`` its question)"""
        """The method's own trust measures, set by ``_attribute`` (``Heatmap.signals``)."""
        self.sampling: Sampling | None = None
        """A sampling method's samples used and planned, set by ``_attribute``."""

    @property
    def watched(self) -> bool:
        """Whether partial maps are wanted (``ModelHandle.report``): compute them only then."""
        return self.model.report is not None

    def report_partial(self, raw: np.ndarray) -> None:
        """Hand the raw map as it stands to ``ModelHandle.report``, scaled as the final one."""
        if self.model.report is not None:
            self.model.report(*scaled(np.asarray(raw, dtype=np.float64), self.map_range))

    @classmethod
    def planned_passes(cls, params: Any, side: tuple[int, int]) -> int:
        """The forward passes ``run`` makes with these checked ``params`` on a model input of
        ``side`` (H, W): the prediction, then one of its own. Sampling methods override it (a
        job's progress counts passes against this plan)."""
        return SINGLE_PASS

    @classmethod
    def completeness_baseline(cls, x: np.ndarray, params: Any) -> np.ndarray | None:
        """The image whose score, with ``x``'s, the map's raw values should add up to
        (integrated gradients' completeness: the values sum to the target logit's change from
        it to ``x``); None for a method without that property."""
        return None

    @classmethod
    def unavailable(cls, bounds: CallBounds) -> str | None:
        """Why the model of ``bounds`` cannot run this method (None: it can)."""
        if cls.needs_one_pass and not bounds.one_pass:
            return (
                f"{cls.name} needs the bundle's one-pass explainer, and the served bundle has "
                "none (make it with 'python -m training one-pass --bundle DIR')"
            )
        return None

    @classmethod
    def check_available(cls, bounds: CallBounds) -> None:
        """``MethodUnavailable`` (422) where ``unavailable`` says why."""
        if (reason := cls.unavailable(bounds)) is not None:
            raise MethodUnavailable(reason)

    @classmethod
    def check_names(cls, params: Any, layers: tuple[str, ...]) -> None:
        """Raise a ``RequestMistake`` (422) for checked ``params`` that name something the
        model lacks (``layers``: the twin's activations); the ones that name nothing pass."""
        return None

    def attribute(
        self, inputs: np.ndarray, target: int | Question | None = None, **params: Any
    ) -> Heatmap:
        """Explain ``inputs`` (one ``(3, H, W)`` float32 model input) for class ``target``, or
        for what a ``Question`` asks (a contrast, the open-set score: ``objective``).

        ``target`` defaults to the predicted class. ``params`` are this method's ``Params``
        fields; an unknown name or a value outside its bounds raises pydantic's
        ``ValidationError``, a bad target ``UnknownClass``; both are ``ValueError``.
        ``Cancelled`` (not a ``ValueError``) once ``model.cancellation`` is.
        Returns an ``(H, W)`` heatmap in ``value_range``.
        """
        return self.run(inputs, target, self.Params.model_validate(params))

    def run(
        self, inputs: np.ndarray, target: int | Question | None, checked: MethodParams
    ) -> Heatmap:
        """``attribute`` with parameters already checked (a ``MethodCall``'s): not checked
        again."""
        if not isinstance(checked, self.Params):
            raise TypeError(
                f"{self.name} takes {self.Params.__name__}, not {type(checked).__name__}"
            )
        x = _check_input(inputs)
        self.model.cancellation.check()
        question = Question.of(target)
        signed = self.signed_for(question)
        self.map_range = SIGNED_RANGE if signed else UNSIGNED_RANGE
        prediction = self._start_prediction(x, question)
        raw, objective, logits = self._explain(x, question, checked, prediction)
        raw = np.asarray(raw, dtype=np.float64)
        if raw.shape != x.shape[1:]:
            raise RuntimeError(f"{self.name} returned shape {raw.shape}, expected {x.shape[1:]}")
        if not np.all(np.isfinite(raw)):
            raise RuntimeError(f"{self.name} produced non-finite values")
        values, scale, negligible = scaled(raw, self.map_range)
        return Heatmap(
            values=values,
            method=self.name,
            target=objective.target,
            signed=signed,
            value_range=self.map_range,
            units=self.units_for(question),
            scale=scale,
            logits=logits,
            params=checked.model_dump(),
            negligible=negligible,
            signals=dict(self.signals),
            objective=objective,
            sampling=self.sampling,
        )

    def _start_prediction(self, x: np.ndarray, question: Question) -> Prediction:
        """The prediction of ``x`` for the answer (and the default target), started before
        ``_explain``: queued on the model (``Prediction.start``) unless a method's own pass
        gives it."""
        return Prediction.start(self.model, x)

    def _explain(
        self, x: np.ndarray, question: Question, params: Any, prediction: Prediction
    ) -> tuple[np.ndarray, Objective, np.ndarray]:
        """The raw map, the objective it explains (the question resolved: the predicted class
        unless it names one) and ``x``'s logits. Here: the prediction first, then
        ``_attribute``. A method with work that needs no target (the twin's forward pass)
        overrides this to do that work while the prediction runs."""
        logits = prediction.logits()
        objective = resolve(question, logits, self.model.open_set)
        return self._attribute(x, objective, params, logits), objective, logits

    def scorer(self, objective: Objective, score: Score) -> Callable[[np.ndarray], np.ndarray]:
        """``objective``'s ``score`` of a batch of perturbed inputs, on the model's forward
        function (its ``rows`` where the score needs the embedding)."""
        return objective.scorer(self.model.forward, self.model.rows, score)

    def photo_score(
        self, x: np.ndarray, objective: Objective, score: Score, logits: np.ndarray
    ) -> float:
        """``objective``'s ``score`` of the unperturbed ``x``: from its ``logits`` (no pass),
        or one pass of ``rows`` where the score needs the embedding."""
        outputs = objective.photo_outputs(x, logits, self.model.rows)
        return float(objective.scores(*outputs, score)[0])

    @abstractmethod
    def _attribute(
        self, x: np.ndarray, objective: Objective, params: Any, logits: np.ndarray
    ) -> np.ndarray:
        """Raw ``(H, W)`` values in ``units`` for ``x`` ``(3, H, W)``, a resolved ``objective``
        (``objective.target`` a valid class), this method's checked ``params`` and ``x``'s
        ``(C,)`` logits (so perturbation methods need no extra pass for the unperturbed score).
        Non-negative for an unsigned method; ``attribute`` scales them into ``value_range``."""


@dataclass(frozen=True)
class CallBounds:
    """What a call is checked against beyond its own ``Params``: the model it will run on
    (``layers``: the twin's activations; ``side``: the model input's (H, W)) and the forward
    passes one request may plan (``max_passes``); whether the bundle has its one-pass
    explainer (``one_pass``)."""

    layers: tuple[str, ...]
    side: tuple[int, int]
    max_passes: int
    one_pass: bool = True


@dataclass(frozen=True)
class MethodCall:
    """A method and its own parameters, checked once (``of``) by the method's ``Params``."""

    explainer: type[Explainer]
    params: MethodParams

    @classmethod
    def of(
        cls,
        explainer: type[Explainer],
        values: Mapping[str, Any],
        bounds: CallBounds | None = None,
    ) -> MethodCall:
        """``values`` checked by ``explainer.Params``, rules across parameters included;
        pydantic's ``ValidationError`` (a ``ValueError``) says what is wrong. With ``bounds``,
        also that the model has what the method runs (``MethodUnavailable``), the names it
        gives (``UnknownLayer``) and its cost (``TooCostly``)."""
        call = cls(explainer, explainer.Params.model_validate(dict(values)))
        if bounds is not None:
            explainer.check_available(bounds)
            explainer.check_names(call.params, bounds.layers)
            call.check_cost(bounds.side, bounds.max_passes)
        return call

    def check_cost(self, side: tuple[int, int], max_passes: int) -> None:
        """``TooCostly`` when the call plans more than ``max_passes`` forward passes on a model
        input of ``side``: the plan, the limit and what to lower."""
        planned = self.planned_passes(side)
        if planned > max_passes:
            hint = f"; {self.explainer.cost_hint}" if self.explainer.cost_hint else ""
            raise TooCostly(
                f"{self.name} with these parameters plans {planned} forward passes, more than "
                f"the {max_passes} one request may ask (max_passes_per_request){hint}"
            )

    @property
    def name(self) -> str:
        return self.explainer.name

    def planned_passes(self, side: tuple[int, int]) -> int:
        return self.explainer.planned_passes(self.params, side)


def sampled_passes(samples: int, batch_size: int) -> int:
    """The passes of a method that scores ``samples`` copies, ``batch_size`` per pass, after the
    prediction."""
    return 1 + math.ceil(samples / batch_size)


def _check_input(inputs: np.ndarray) -> np.ndarray:
    x = np.asarray(inputs)
    if x.ndim != 3 or x.shape[0] != 3:
        raise ValueError(f"expected one (3, H, W) model input, got shape {x.shape}")
    return np.ascontiguousarray(x, dtype=np.float32)
