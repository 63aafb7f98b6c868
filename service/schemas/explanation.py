"""Explanations: one method's answer (``POST /explain/{method}``) and the list of methods."""

from __future__ import annotations

import dataclasses
from typing import Any, Literal

from pydantic import BaseModel, Field

from service.explain.convergence import Sampling
from service.explain.quality import QualityReport
from service.render.upload import HeatmapGrid
from service.schemas.common import ClassProbability, FaceBox, ImageInfo, ModelRef


class ExplainTimings(BaseModel):
    decode_ms: float
    detect_ms: float = Field(description="finding and aligning the face")
    preprocess_ms: float
    explain_ms: float = Field(description="computing the heatmap (0 when it came from the cache)")
    quality_ms: float = Field(
        0.0, description="grading the map (0 without quality, or when it came from the cache)"
    )
    total_ms: float


class ObjectiveInfo(BaseModel):
    """What the map explains (docs/explanations.md#why-this-class-and-not-that-one): the
    target's score, the target against a contrast class, or the open-set score. Positive map
    values are evidence for it: for the target, for the target over the contrast, for "one of
    the classes" over "none of them"."""

    kind: Literal["class", "contrast", "open_set"] = Field(
        description="class: why the target (its score); contrast: why the target and not the "
        "contrast class (logit(target) - logit(contrast)); open_set: why one of the classes, "
        "or why none (the open-set score /predict's open_set verdict reads)"
    )
    score: str = Field(description="the score explained, in words, with class ids")
    contrast: ClassProbability | None = Field(
        None, description="the class the target is contrasted with (kind=contrast only)"
    )
    value: float = Field(
        description="the score on this face as a probability: the target's probability "
        "(class), the target's probability between the two classes, p_target / (p_target + "
        "p_contrast) (contrast), the open-set score (open_set); quality grades this one"
    )
    log_odds: float = Field(
        description="the score as a logit: the target's logit (class), logit(target) - "
        "logit(contrast) (contrast), the open-set score's log-odds (open_set); what gradient "
        "methods differentiate"
    )
    known: bool | None = Field(
        None,
        description="open_set only: /predict's verdict, whether the face is one of the classes",
    )
    threshold: float | None = Field(
        None, description="open_set only: the threshold of that verdict (known when value >= it)"
    )


class QualityInfo(BaseModel):
    """How much to believe this map on this face (docs/explanations.md#how-much-to-believe-a-map):
    its deletion and insertion areas against a random map's, the method's own signals, and a
    verdict by the rule ``GET /explain`` states."""

    verdict: Literal["strong", "weak", "unreliable"]
    reasons: list[str] = Field(description="what decided the verdict, in words")
    deletion_auc: float = Field(
        description="area under the target's probability as the map's most important pixels "
        "are deleted first (lower is better)"
    )
    insertion_auc: float = Field(
        description="area under the target's probability as they are put back into the "
        "blurred face first (higher is better)"
    )
    random_deletion_auc: float = Field(description="the same for a random map of this face")
    random_insertion_auc: float = Field(description="the same for a random map of this face")
    deletion_ratio: float | None = Field(
        description="deletion_auc / random_deletion_auc: below 1 beats a random map; null "
        "when the random map's area is 0"
    )
    insertion_ratio: float | None = Field(
        description="insertion_auc / random_insertion_auc: above 1 beats a random map"
    )
    gain: float | None = Field(
        description="how much better than the random map: the mean of (1 - deletion_ratio) "
        "and (insertion_ratio - 1); 0 for a random map; 1 - deletion_ratio where insertion "
        "cannot measure (GET /explain's quality_rule)"
    )
    probability: float = Field(description="the target's probability on the face")
    deleted_probability: float = Field(
        description="the target's probability once every pixel is deleted"
    )
    blurred_probability: float = Field(
        description="the target's probability on the blurred face, where insertion starts"
    )
    signals: dict[str, float] = Field(
        description="the method's own: completeness_gap (integrated gradients: |sum of "
        "attributions - logit change| / |logit change|), surrogate_r2 (LIME's weighted fit), "
        "split_half_agreement (Spearman of the maps from each half of the samples: LIME, "
        "RISE, SmoothGrad)"
    )
    steps: int = Field(description="steps per curve")

    @classmethod
    def of(cls, report: QualityReport) -> QualityInfo:
        values = dataclasses.asdict(report)
        return cls(**{**values, "reasons": list(report.reasons), "signals": dict(report.signals)})


class SampleUse(BaseModel):
    """How much of its sample budget a sampling method used for this map (stop=)."""

    used: int = Field(
        description="samples scored: LIME's patterns, RISE's masks, SmoothGrad's noisy copies, "
        "integrated gradients' path points, occlusion's windows"
    )
    planned: int = Field(description="the budget the parameters set (used <= planned)")
    stop: Literal["converged", "fixed"] = Field(
        description="the rule followed: fixed = the whole budget; converged = until the map was "
        "stable (docs/explanations.md#stopping-when-the-map-has-converged)"
    )

    @classmethod
    def of(cls, sampling: Sampling | None) -> SampleUse | None:
        return None if sampling is None else cls(**dataclasses.asdict(sampling))


class SanityNote(BaseModel):
    """The method's result in the bundle's sanity check (``python -m training sanity``)."""

    passed: bool = Field(
        description="false: the method's maps stay similar when the model's weights are "
        "randomised, so they show the image more than what the model learned"
    )
    note: str = Field(description="what the result means, in one sentence")


class ExplanationResponse(BaseModel):
    """A heatmap for one class, with the prediction it explains and the parameters used."""

    method: str
    target: ClassProbability = Field(
        description="the class explained (for target=open_set: the predicted class, the one the "
        "verdict is about)"
    )
    explains: ObjectiveInfo
    label: str = Field(description="predicted class id")
    name: str = Field(description="display name of the predicted class")
    probability: float = Field(description="probability of the predicted class")
    probabilities: list[ClassProbability] = Field(description="every class, most probable first")
    parameters: dict[str, Any] = Field(description="every parameter of the method, as used")
    heatmap: HeatmapGrid
    face_box: FaceBox = Field(description="the face explained (the region /predict classifies)")
    face_index: int | None = Field(description="which detected face; null: the whole image")
    image: ImageInfo
    model: ModelRef
    cached: bool = Field(description="whether the heatmap came from the result cache")
    samples: SampleUse | None = Field(
        None,
        description="samples used and planned (LIME, RISE, SmoothGrad, integrated gradients, "
        "occlusion; null for the others); on a PNG answer the X-Samples-Used and "
        "X-Samples-Planned headers",
    )
    quality: QualityInfo | None = Field(
        None,
        description="how much to believe the map (null unless quality=true, or the method "
        "grades by default: GET /explain)",
    )
    sanity: SanityNote | None = Field(
        None, description="the method's sanity check on this model (null: the bundle has none)"
    )
    timings: ExplainTimings


class QualityCost(BaseModel):
    """What ``quality=true`` costs a method's answer, and whether it is on by default."""

    default: bool = Field(
        description="graded unless quality=false: where grading adds at most about a third to "
        "the method's time at its defaults (docs/explanations.md)"
    )
    passes: int = Field(
        description="forward passes grading adds for the first map of a face and target (the "
        "random map's curves included)"
    )
    repeat_passes: int = Field(
        description="forward passes for another map of the same face and target (the random "
        "map's curves are kept)"
    )
    signals: list[str] = Field(description="the method's own signals in the report")


class MethodInfo(BaseModel):
    """One explanation method, as ``POST /explain/{name}`` runs it."""

    name: str = Field(description="the method's path segment: POST /explain/{name}")
    title: str = Field(description="display name")
    shows: str = Field(description="what the map shows, for people")
    signed: bool = Field(
        description="true: values in [-1, 1], positive = evidence for the target class, "
        "negative = against it; false: values in [0, 1], larger = more important"
    )
    value_range: tuple[float, float]
    units: str = Field(description="what the heatmap's values x scale measure")
    needs_twin: bool = Field(
        description="computed with gradients on the differentiable twin (false: batched "
        "forward passes of the ONNX model only)"
    )
    anytime: bool = Field(
        description="refines its map as it samples: as a job (POST /jobs/{method}) its events "
        "carry the map as it stands (the web page runs it so, drawing the map as it comes)"
    )
    parameters: dict[str, Any] = Field(
        description="JSON Schema of the method's own query parameters: properties with their "
        "type, default, bounds or choices, and description"
    )
    quality: QualityCost = Field(description="what grading its maps costs, and its default")
    sanity: SanityNote | None = Field(
        description="its result in the bundle's sanity check (null: the bundle has none)"
    )
    explains: list[Literal["class", "contrast", "open_set"]] = Field(
        description="what its maps can explain on this model (ObjectiveInfo.kind): a class, a "
        "contrast (contrast=), the open-set score (target=open_set; where the model has one)"
    )
    contrast_signed: bool = Field(
        description="whether its map of a contrast is signed (positive: favours the target, "
        "negative: the contrast), whatever `signed` says of its other maps"
    )
    available: bool = Field(
        True,
        description="whether the served bundle can run it (false: POST answers 422 "
        "method_unavailable, and `unavailable` says why)",
    )
    unavailable: str | None = Field(
        None, description="why the served bundle cannot run it (null: it can)"
    )


class MethodsResponse(BaseModel):
    """Every explanation method the service runs, in the page's order."""

    common_parameters: list[str] = Field(
        description="query parameters every method takes: target, format, quality, detect, face"
    )
    quality_rule: str = Field(description="how an answer's quality.verdict is decided")
    methods: list[MethodInfo]


class MapInfo(BaseModel):
    """The map that was graded, as it was read."""

    width: int
    height: int
    space: Literal["upload", "model_input"] = Field(
        description="upload: laid on the upload (its size, or the JSON answer's grid) and "
        "carried onto the face through the same alignment as the photo; model_input: already "
        "on the model input"
    )


class EvaluationTimings(BaseModel):
    decode_ms: float
    detect_ms: float = Field(description="finding and aligning the face")
    preprocess_ms: float
    quality_ms: float = Field(description="the prediction and the grading")
    total_ms: float


class EvaluationResponse(BaseModel):
    """The quality report of a map made elsewhere, graded against the served model."""

    target: ClassProbability = Field(description="the class the map is graded for")
    explains: ObjectiveInfo = Field(description="the score the map is graded on")
    label: str = Field(description="predicted class id")
    probability: float = Field(description="probability of the predicted class")
    quality: QualityInfo
    map: MapInfo
    face_box: FaceBox = Field(description="the face graded (the region /predict classifies)")
    face_index: int | None = Field(description="which detected face; null: the whole image")
    image: ImageInfo
    model: ModelRef
    timings: EvaluationTimings
