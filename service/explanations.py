"""The explanation use case: why the model chose a class for one face, by one method.

Every way of asking for an explanation runs this one path: the synchronous routes
(``POST /explain/{method}``, ``/saliency``, ``/occlusion``, ``/lime``), a job
(``POST /jobs/{method}``: the same call, run later) and, in Ray mode, the ``Explain``
replicas (which serve those same routes in their own app)::

    explanation = explain(model, inputs, call, target, cache, cancellation)   # worker thread
    body = json_answer(model, image, inputs, explanation)                    # format=json
    png = render_png("overlay", image.rgb, inputs.face.aligned, explanation.heatmap)

``explain`` takes a heatmap from the cache (keyed by model, model input, method, parameters and
target, within the ``ExplanationCache``'s scope: one per API key when keys are configured) or
computes it: the method runs on the calling thread, its forward passes on the
engine's inference thread, where they queue with ``/predict`` batches (a job's, whose
``cancellation`` is a ``BackgroundWork``, behind every interactive one); once ``cancellation``
is cancelled it stops at the next batch (``Cancelled``). ``PartialMaps`` turns a sampling
method's partial maps into what a job's events carry. An answer needs only ``UploadFacts`` of
the upload (its size and header facts), not its pixels: a queued job keeps those, not the
decoded image.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from concurrent.futures import Future
from dataclasses import dataclass
from typing import Any

import numpy as np

from service.bundle.format import ONNX_FILE
from service.common.cancellation import Cancellation
from service.common.lru import LruCache
from service.explain import Heatmap, ModelHandle, array_digest, cache_key
from service.explain.base import MethodCall
from service.inference.model import ModelInput, ServingModel
from service.intake.images import DecodedImage
from service.render.upload import json_grid, values_grid
from service.schemas.common import ClassProbability, FaceBox, ImageInfo, ModelRef, rank_classes
from service.schemas.explanation import ExplainTimings, ExplanationResponse

Report = Callable[[np.ndarray, float, bool], None]
"""A sampling method's map as it stands: (values, scale, negligible), scaled as the final one."""


@dataclass(frozen=True)
class UploadFacts:
    """What an explanation's answer says of its upload, without its pixels (a 40-megapixel
    upload decodes to 120 MB; this is a few bytes)."""

    size: tuple[int, int]
    """(width, height) of the decoded upload"""
    info: ImageInfo
    decode_ms: float
    received_at: float
    """``time.perf_counter()`` when intake began"""

    @classmethod
    def of(cls, image: DecodedImage | UploadFacts) -> UploadFacts:
        if isinstance(image, UploadFacts):
            return image
        return cls(image.rgb.size, ImageInfo.of(image), image.decode_ms, image.received_at)


@dataclass(frozen=True)
class Explanation:
    """A heatmap, whether it came from the cache, and how long computing it took (0 if
    cached)."""

    heatmap: Heatmap
    cached: bool
    explain_ms: float


@dataclass(frozen=True)
class ExplanationCache:
    """The app's heatmap LRU as one client sees it: every key within ``scope`` (a digest of the
    API key, or "" where all clients share it), so one client's entries are never another's
    hits; the LRU's bounds stay the app's."""

    lru: LruCache
    scope: str = ""

    def get(self, key: str) -> Heatmap | None:
        found: Heatmap | None = self.lru.get(self._scoped(key))
        return found

    def put(self, key: str, heatmap: Heatmap) -> None:
        self.lru.put(self._scoped(key), heatmap)

    def _scoped(self, key: str) -> str:
        return f"{self.scope}|{key}"


def explain(
    model: ServingModel,
    inputs: ModelInput,
    call: MethodCall,
    target: int | None,
    cache: ExplanationCache,
    cancellation: Cancellation,
    report: Report | None = None,
) -> Explanation:
    """``call``'s heatmap of ``inputs`` for class ``target`` (None: the predicted class), from
    ``cache`` or computed here (a worker thread) and kept there. ``report``: the sampling
    methods' partial maps, for whoever watches (a job)."""
    key = explanation_key(model, inputs, call, target)
    found = cache.get(key)
    if found is not None:
        return Explanation(found, cached=True, explain_ms=0.0)
    started = time.perf_counter()
    handle = model_handle(model, cancellation, report)
    heatmap = call.explainer(handle).run(inputs.x, target, call.params)
    cache.put(key, heatmap)
    return Explanation(heatmap, cached=False, explain_ms=(time.perf_counter() - started) * 1000)


def explanation_key(
    model: ServingModel, inputs: ModelInput, call: MethodCall, target: int | None
) -> str:
    """The cache key of this face, method, parameters, target and model."""
    return cache_key(
        image_digest=array_digest(inputs.x),
        method=call.name,
        params=call.params.model_dump(),
        target=target,
        model_digest=model.meta.files[ONNX_FILE].sha256,
    )


def model_handle(
    model: ServingModel, cancellation: Cancellation, report: Report | None = None
) -> ModelHandle:
    """What the methods may use of ``model`` for one piece of work: forward passes on the
    engine's inference thread (stopped by ``cancellation``), the twin and its Grad-CAM layer."""

    def forward(batch: np.ndarray) -> np.ndarray:
        return model.engine.run_on_inference_thread(batch, cancellation)

    def forward_soon(batch: np.ndarray) -> Future[np.ndarray]:
        return model.engine.run_soon(batch, cancellation)

    return ModelHandle(
        forward,
        model.twin,
        model.meta.gradcam_layer,
        cancellation,
        forward_soon=forward_soon,
        report=report,
    )


def json_answer(
    model: ServingModel,
    image: DecodedImage | UploadFacts,
    inputs: ModelInput,
    explanation: Explanation,
) -> ExplanationResponse:
    """The ``format=json`` answer: the map laid onto the upload, with the prediction."""
    upload = UploadFacts.of(image)
    heatmap = explanation.heatmap
    grid = json_grid(heatmap, inputs.face.aligned, upload.size)
    probabilities = heatmap.probabilities
    ranked = rank_classes(model, probabilities)
    explained = model.meta.classes[heatmap.target]
    return ExplanationResponse(
        method=heatmap.method,
        target=ClassProbability(
            id=explained.id,
            name=explained.name,
            probability=float(probabilities[heatmap.target]),
        ),
        label=ranked[0].id,
        name=ranked[0].name,
        probability=ranked[0].probability,
        probabilities=ranked,
        parameters=heatmap.params,
        heatmap=grid,
        face_box=FaceBox.of(inputs.face),
        face_index=inputs.face.index,
        image=upload.info,
        model=ModelRef.of(model),
        cached=explanation.cached,
        timings=ExplainTimings(
            decode_ms=upload.decode_ms,
            detect_ms=inputs.face.detect_ms,
            preprocess_ms=inputs.preprocess_ms,
            explain_ms=explanation.explain_ms,
            total_ms=(time.perf_counter() - upload.received_at) * 1000,
        ),
    )


class PartialMaps:
    """A sampling method's partial maps laid onto the upload as the ``format=json`` grid and
    handed to ``publish``, at most one per ``interval`` seconds (a job's event rate: maps in
    between would never be sent). Only what is shown is paced by the clock, never the map."""

    def __init__(
        self,
        image: DecodedImage | UploadFacts,
        inputs: ModelInput,
        call: MethodCall,
        interval: float,
        publish: Callable[[dict[str, Any]], None],
    ) -> None:
        self.size, self.inputs, self.explainer = UploadFacts.of(image).size, inputs, call.explainer
        self.interval, self.publish = interval, publish
        self.last = -math.inf

    def report(self, values: np.ndarray, scale: float, negligible: bool) -> None:
        now = time.monotonic()
        if now - self.last < self.interval:
            return
        self.last = now
        grid = values_grid(
            values,
            self.inputs.face.aligned,
            self.size,
            signed=self.explainer.signed,
            value_range=self.explainer.value_range,
            units=self.explainer.units,
            scale=scale,
            negligible=negligible,
        )
        self.publish({"partial": grid.model_dump(mode="json")})
