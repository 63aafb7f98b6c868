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
from functools import partial
from typing import Any, Literal, cast

import numpy as np
from PIL import Image

from service.bundle.format import ONNX_FILE
from service.common.cancellation import Cancellation
from service.common.lru import LruCache
from service.common.softmax import softmax
from service.errors import BadMap
from service.explain import Heatmap, ModelHandle, array_digest, cache_key
from service.explain.base import SIGNED_RANGE, UNSIGNED_RANGE, MethodCall
from service.explain.objective import Objective, Question, resolve
from service.explain.one_pass import FastShap
from service.explain.quality import QualityReport, RandomCurves, grade_heatmap
from service.explain.quality import grade as grade_map
from service.faces.aligned import AlignedFace
from service.inference.model import ModelInput, ServingModel
from service.intake.images import DecodedImage
from service.observability import tracing
from service.render.png import scaled_size
from service.render.upload import MAX_JSON_SIDE, NEGLIGIBLE_HEADER, json_grid, values_grid
from service.schemas.common import ClassProbability, FaceBox, ImageInfo, ModelRef, rank_classes
from service.schemas.explanation import (
    ExplainTimings,
    ExplanationResponse,
    ObjectiveInfo,
    QualityInfo,
    SampleUse,
    SanityNote,
)

MapSpace = Literal["upload", "model_input"]
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
    """A heatmap, whether it came from the cache, how long computing it took (0 if cached),
    the score it explains on the face, and its quality report when one was asked for
    (``grade``)."""

    heatmap: Heatmap
    cached: bool
    explain_ms: float
    scores: tuple[float, float]
    """the objective's score on the face, (probability, logit) flavours (``photo_scores``)"""
    quality: QualityReport | None = None
    quality_ms: float = 0.0


@dataclass(frozen=True)
class ExplanationCache:
    """The app's heatmap LRU as one client sees it: every key within ``scope`` (a digest of the
    API key, or "" where all clients share it), so one client's entries are never another's
    hits; the LRU's bounds stay the app's. ``grades`` keeps what grading made (quality
    reports, a face's random curves: small values, many per face) apart, so that they never
    push heatmaps out; None keeps them with the heatmaps."""

    lru: LruCache
    scope: str = ""
    grades: LruCache | None = None

    def get(self, key: str) -> Heatmap | None:
        found: Heatmap | None = self.lru.get(self._scoped(key))
        return found

    def put(self, key: str, heatmap: Heatmap) -> None:
        self.lru.put(self._scoped(key), heatmap)

    def get_grade(self, key: str) -> Any:
        return self._grades.get(self._scoped(key))

    def put_grade(self, key: str, value: QualityReport | RandomCurves) -> None:
        self._grades.put(self._scoped(key), value)

    @property
    def _grades(self) -> LruCache:
        return self.lru if self.grades is None else self.grades  # an empty LRU is falsy

    def _scoped(self, key: str) -> str:
        return f"{self.scope}|{key}"


def explain(
    model: ServingModel,
    inputs: ModelInput,
    call: MethodCall,
    target: int | Question | None,
    cache: ExplanationCache,
    cancellation: Cancellation,
    report: Report | None = None,
    quality: bool = False,
) -> Explanation:
    """``call``'s heatmap of ``inputs`` for class ``target`` (None: the predicted class; a
    ``Question``: a contrast or the open-set score), from
    ``cache`` or computed here (a worker thread) and kept there; with ``quality``, its quality
    report too (``grade``). ``report``: the sampling methods' partial maps, for whoever
    watches (a job). Traced as ``explain`` (the method's ``explanation batch`` spans below it,
    its forward passes counted in ``celebxai.explain.passes``) and ``quality``."""
    key = explanation_key(model, inputs, call, target)
    found = cache.get(key)
    cached, explain_ms = found is not None, 0.0
    with tracing.span(
        "explain", {"celebxai.explain.method": call.name, "celebxai.explain.cached": cached}
    ) as span:
        passes = cancellation.passes
        if found is None:
            started = time.perf_counter()
            handle = model_handle(model, cancellation, report)
            found = call.explainer(handle).run(inputs.x, target, call.params)
            cache.put(key, found)
            explain_ms = (time.perf_counter() - started) * 1000
        scores = photo_scores(model, inputs, found.explains, found.logits, cancellation)
        span.set_attribute("celebxai.explain.passes", cancellation.passes - passes)
        span.set_attribute("celebxai.explain.target", found.target)
    if not quality:
        return Explanation(found, cached, explain_ms, scores)
    with tracing.span("quality", {"celebxai.explain.method": call.name}) as span:
        passes = cancellation.passes
        started = time.perf_counter()
        completeness = call.explainer.completeness_baseline(inputs.x, call.params)
        graded = grade(model, inputs, found, cache, cancellation, key, completeness)
        quality_ms = (time.perf_counter() - started) * 1000
        span.set_attribute("celebxai.explain.passes", cancellation.passes - passes)
    return Explanation(found, cached, explain_ms, scores, graded, quality_ms)


def photo_scores(
    model: ServingModel,
    inputs: ModelInput,
    objective: Objective,
    logits: np.ndarray,
    cancellation: Cancellation,
) -> tuple[float, float]:
    """``objective``'s score on the face, as a probability and as a logit: from its
    ``logits``, or with one pass for the embedding where the score needs it (open set)."""
    outputs = objective.photo_outputs(inputs.x, logits, model_handle(model, cancellation).rows)
    probability, logit = (objective.scores(*outputs, kind)[0] for kind in ("probability", "logit"))
    return float(probability), float(logit)


def objective_info(
    model: ServingModel, objective: Objective, logits: np.ndarray, scores: tuple[float, float]
) -> ObjectiveInfo:
    """What an answer says its map explains (``ObjectiveInfo``)."""
    classes = model.meta.classes
    contrast = None
    if objective.contrast is not None:
        info = classes[objective.contrast]
        probability = float(
            softmax(np.asarray(logits, dtype=np.float64)[None])[0, objective.contrast]
        )
        contrast = ClassProbability(id=info.id, name=info.name, probability=probability)
    rule = model.open_set if objective.kind == "open_set" else None
    return ObjectiveInfo(
        kind=objective.kind,
        score=objective.describe([info.id for info in classes]),
        contrast=contrast,
        value=scores[0],
        log_odds=scores[1],
        known=None if rule is None else scores[0] >= rule.threshold,
        threshold=None if rule is None else rule.threshold,
    )


def grade(
    model: ServingModel,
    inputs: ModelInput,
    heatmap: Heatmap,
    cache: ExplanationCache,
    cancellation: Cancellation,
    key: str | None = None,
    completeness_baseline: np.ndarray | None = None,
) -> QualityReport:
    """``heatmap``'s quality report on ``inputs`` (``service.explain.quality``), from
    ``cache`` under ``key`` (the heatmap's) or computed here, its forward passes on the
    engine's inference thread like the method's. The random map's curves are kept per face
    and target, so the other maps of a face cost one pass each. ``completeness_baseline``:
    the method's (``Explainer.completeness_baseline``)."""
    quality_key = None if key is None else f"{key}|quality"
    if quality_key is not None and (found := cache.get_grade(quality_key)) is not None:
        return cast(QualityReport, found)
    handle = model_handle(model, cancellation)
    report = _with_random_curves(
        model,
        inputs,
        heatmap.explains,
        cache,
        partial(
            grade_heatmap,
            handle.forward,
            inputs.x,
            heatmap,
            completeness_baseline,
            rows=handle.rows,
        ),
        cancellation,
    )
    if quality_key is not None:
        cache.put_grade(quality_key, report)
    return report


def evaluate(
    model: ServingModel,
    inputs: ModelInput,
    values: np.ndarray,
    target: int | Question | None,
    cache: ExplanationCache,
    cancellation: Cancellation,
) -> tuple[QualityReport, Objective, np.ndarray, tuple[float, float]]:
    """Grade a map from elsewhere (``values``: ``(H, W)`` on the model input) for ``target``
    (None: the predicted class; a ``Question``: a contrast or the open-set score): its report,
    the objective it was graded on, the face's logits and the objective's scores on it."""
    handle = model_handle(model, cancellation)
    logits = np.asarray(handle.forward(inputs.x[None]), dtype=np.float32)[0]
    objective = resolve(Question.of(target), logits, handle.open_set)
    graded = partial(
        grade_map, handle.forward, inputs.x, values, objective, logits, rows=handle.rows
    )
    report = _with_random_curves(model, inputs, objective, cache, graded, cancellation)
    scores = photo_scores(model, inputs, objective, logits, cancellation)
    return report, objective, logits, scores


def _with_random_curves(
    model: ServingModel,
    inputs: ModelInput,
    objective: Objective,
    cache: ExplanationCache,
    graded: Callable[..., tuple[QualityReport, RandomCurves]],
    cancellation: Cancellation,
) -> QualityReport:
    """``graded(random=..., cancellation=...)``'s report, with the face's random curves for
    ``objective`` from ``cache`` (kept there after)."""
    digests = (model.meta.files[ONNX_FILE].sha256, array_digest(inputs.x))
    random_key = "|".join(("random-curves", *digests, objective.key))
    report, random = graded(random=cache.get_grade(random_key), cancellation=cancellation)
    cache.put_grade(random_key, random)
    return report


def map_on_model_input(
    values: np.ndarray, aligned: AlignedFace, upload_size: tuple[int, int], side: tuple[int, int]
) -> tuple[np.ndarray, MapSpace]:
    """A map sent to be graded, on the model input ``side`` (H, W), and the space it was in:
    ``model_input`` at that size; ``upload`` at the upload's size or at the size of the grid a
    JSON answer for this upload has (``render.upload.json_grid``). Anything else is 422
    ``bad_map``, saying the sizes it may have."""
    height, width = values.shape
    grid = scaled_size(upload_size, min(1.0, MAX_JSON_SIDE / max(upload_size)))
    if (width, height) == upload_size or (width, height) == grid:
        on_crop = aligned.from_image(values, width / upload_size[0])
        space: MapSpace = "upload"
    elif (height, width) == side:
        return np.asarray(values, dtype=np.float32), "model_input"
    else:
        sizes = {f"{w}x{h}" for w, h in (upload_size, grid, side[::-1])}
        raise BadMap(
            f"the map is {width}x{height}; send it at the upload's size, the JSON answer's "
            f"grid or the model input's: {', '.join(sorted(sizes))} (width x height)"
        )
    if on_crop.shape != side:
        layer = Image.fromarray(on_crop, mode="F")
        on_crop = np.asarray(layer.resize(side[::-1], Image.Resampling.BILINEAR))
    return on_crop, space


def explanation_key(
    model: ServingModel, inputs: ModelInput, call: MethodCall, target: int | Question | None
) -> str:
    """The cache key of this face, method, parameters, target (or question) and model."""
    question = Question.of(target)
    return cache_key(
        image_digest=array_digest(inputs.x),
        method=call.name,
        params=call.params.model_dump(),
        target=question.target if question == Question(question.target) else question.key,
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

    def rows(batch: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        out = model.engine.run_on_inference_thread(batch, cancellation, rows=True)
        classes = len(model.meta.classes)
        return out[:, :classes], out[:, classes:]

    return ModelHandle(
        forward,
        model.twin,
        model.meta.gradcam_layer,
        cancellation,
        forward_soon=forward_soon,
        report=report,
        rows=rows if model.engine.has_embedding else None,
        open_set=model.open_set_score,
        one_pass=model.one_pass,
    )


QUALITY_HEADER = "X-Quality-Verdict"
"""A PNG answer's verdict (JSON's quality.verdict), when the map was graded."""
SAMPLES_USED_HEADER = "X-Samples-Used"
SAMPLES_PLANNED_HEADER = "X-Samples-Planned"
"""A sampling method's PNG answer: its samples used and planned (JSON's samples)."""


def wants_quality(call: MethodCall, asked: bool | None) -> bool:
    """Whether to grade: as asked (``quality=true|false``), else the method's default."""
    return call.explainer.quality_by_default if asked is None else asked


def answer_headers(explanation: Explanation) -> dict[str, str]:
    """A PNG answer's headers: whether the map is negligible, its verdict when graded, and a
    sampling method's samples used and planned."""
    headers = {NEGLIGIBLE_HEADER: str(explanation.heatmap.negligible).lower()}
    if explanation.quality is not None:
        headers[QUALITY_HEADER] = explanation.quality.verdict
    sampling = explanation.heatmap.sampling
    if sampling is not None:
        headers[SAMPLES_USED_HEADER] = str(sampling.used)
        headers[SAMPLES_PLANNED_HEADER] = str(sampling.planned)
    return headers


def sanity_note(model: ServingModel, method: str) -> SanityNote | None:
    """``method``'s result in the bundle's sanity check, in one sentence; None without one. The
    one-pass method's is its explainer's own cascade (``meta.one_pass.gates``), refitted to the
    model at every stage."""
    spec = model.meta.sanity
    result = None if spec is None else spec.methods.get(method)
    if spec is None or result is None or not result.stages:
        return one_pass_sanity_note(model) if method == FastShap.name else None
    closest = max(result.stages, key=lambda stage: stage.spearman)
    return _sanity_sentence(result.passed, closest.stage, closest.spearman, spec.pass_below)


def one_pass_sanity_note(model: ServingModel) -> SanityNote | None:
    """The one-pass explainer's randomisation gate (``meta.one_pass.gates``), as a note."""
    one_pass = model.meta.one_pass
    check = None if one_pass is None else one_pass.gates.get("randomisation")
    if not check or not check.get("stages"):
        return None
    closest = max(check["stages"], key=lambda stage: stage["spearman"])
    # the same rule as the bundle's sanity check (training.sanity.PASS_BELOW)
    limit = None if model.meta.sanity is None else model.meta.sanity.pass_below
    return _sanity_sentence(
        bool(check["passed"]), closest["stage"], float(closest["spearman"]), limit
    )


def _sanity_sentence(passed: bool, stage: str, spearman: float, limit: float | None) -> SanityNote:
    similarity = (
        f"rank correlation {spearman:.2f} with the trained model's maps once "
        f"{stage} and every layer above it are random"
        + ("" if limit is None else f" (limit {limit})")
    )
    if passed:
        note = f"passes the sanity check: its maps change with the model's weights ({similarity})"
    else:
        note = (
            "fails the sanity check: its maps stay similar when the model's weights are "
            f"randomised, so they show the photo more than what the model learned ({similarity})"
        )
    return SanityNote(passed=passed, note=note)


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
        explains=objective_info(model, heatmap.explains, heatmap.logits, explanation.scores),
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
        samples=SampleUse.of(heatmap.sampling),
        quality=None if explanation.quality is None else QualityInfo.of(explanation.quality),
        sanity=sanity_note(model, heatmap.method),
        timings=ExplainTimings(
            decode_ms=upload.decode_ms,
            detect_ms=inputs.face.detect_ms,
            preprocess_ms=inputs.preprocess_ms,
            explain_ms=explanation.explain_ms,
            quality_ms=explanation.quality_ms,
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
        question: Question | None = None,
    ) -> None:
        self.size, self.inputs, self.explainer = UploadFacts.of(image).size, inputs, call.explainer
        self.signed = self.explainer.signed_for(question or Question())
        self.units = self.explainer.units_for(question or Question())
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
            signed=self.signed,
            value_range=SIGNED_RANGE if self.signed else UNSIGNED_RANGE,
            units=self.units,
            scale=scale,
            negligible=negligible,
        )
        self.publish({"partial": grid.model_dump(mode="json")})
