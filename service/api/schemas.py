"""Response bodies of the HTTP API, named by role. Field descriptions end up in openapi.yaml."""

from __future__ import annotations

import time
from collections.abc import Sequence
from datetime import datetime
from typing import Any, Literal

import numpy as np
from pydantic import BaseModel, Field

from service.bundle.format import BundleMeta
from service.bundle.open_set import OpenSetRule
from service.errors import all_error_codes
from service.faces.choice import FaceChoice
from service.inference.model import Classification, ServingModel
from service.intake.images import DecodedImage


class ErrorDetail(BaseModel):
    code: str = Field(description="stable machine-readable error code (README: Error codes)")
    message: str = Field(description="what went wrong, for people")


class ErrorResponse(BaseModel):
    error: ErrorDetail


class ClassProbability(BaseModel):
    id: str = Field(description="class id")
    name: str = Field(description="display name")
    probability: float = Field(ge=0, le=1)


def rank_classes(
    model: ServingModel, probabilities: Sequence[float] | np.ndarray
) -> list[ClassProbability]:
    """Every class of ``model`` with its probability, most probable first (ties: class order)."""
    classes = model.meta.classes
    order = sorted(range(len(classes)), key=lambda i: -float(probabilities[i]))
    return [
        ClassProbability(
            id=classes[i].id, name=classes[i].name, probability=float(probabilities[i])
        )
        for i in order
    ]


class FaceBox(BaseModel):
    """The image region that was classified, in pixels of the uploaded image (after EXIF
    orientation)."""

    x: int
    y: int
    width: int
    height: int
    source: Literal["whole_image", "detector", "face_crop"] = Field(
        description="detector: the face found in the photo (cropped upright, aligned by its "
        "landmarks); face_crop: the upload itself was taken as a face crop (no face detected "
        "in it as a photo, but a face filling it; aligned by its landmarks the same way); "
        "whole_image: no face detection, the full image was used"
    )

    @classmethod
    def of(cls, face: FaceChoice) -> FaceBox:
        box = face.box
        return cls(x=box.x, y=box.y, width=box.width, height=box.height, source=face.source)


class DetectedFace(BaseModel):
    x: int
    y: int
    width: int
    height: int
    score: float = Field(
        description="detector confidence (SVM margin): higher is surer, 0 is its usual cut-off"
    )


class OpenSetRuleInfo(BaseModel):
    """The "none of the classes" decision in force: its score and operating point."""

    definition: str = Field(
        description="the score: max_softmax_probability, or fused (meta.json "
        "open_set.fusion: a logistic regression over the largest class probability and the "
        "cosine similarity to the nearest training face); higher = more likely one of the "
        "classes"
    )
    threshold: float = Field(description="known when score >= threshold")
    target_false_rejection_rate: float | None = Field(
        description="the fraction of the classes' own calibration faces the threshold rejects "
        "at most; null when the bundle does not say"
    )
    threshold_source: Literal["bundle", "setting"] = Field(
        description="bundle: the bundle's calibrated threshold; setting: computed at load time "
        "for the open_set_target_frr setting"
    )

    @classmethod
    def of(cls, rule: OpenSetRule) -> OpenSetRuleInfo:
        return cls(
            definition=rule.score,
            threshold=rule.threshold,
            target_false_rejection_rate=rule.target_false_rejection_rate,
            threshold_source="setting" if rule.threshold_source == "setting" else "bundle",
        )


class OpenSetVerdict(OpenSetRuleInfo):
    """Is the face one of the model's classes at all? A softmax always names a class, even for a
    stranger; this says whether to believe it."""

    known: bool = Field(description="true: one of the classes; false: most likely none of them")
    score: float = Field(description="this face's score (see definition)")

    @classmethod
    def judge(cls, rule: OpenSetRule, score: float) -> OpenSetVerdict:
        info = OpenSetRuleInfo.of(rule).model_dump()
        return cls(known=score >= rule.threshold, score=score, **info)


class ImageInfo(BaseModel):
    width: int
    height: int
    format: str = Field(description="format sniffed from the bytes: JPEG, PNG, WEBP or BMP")
    mode: str = Field(description="Pillow mode of the upload before conversion to RGB")
    frames: int = Field(description="frames in the file; only the first is used")

    @classmethod
    def of(cls, image: DecodedImage) -> ImageInfo:
        return cls(
            width=image.width,
            height=image.height,
            format=image.format,
            mode=image.source_mode,
            frames=image.frames,
        )


class ModelRef(BaseModel):
    name: str
    version: str

    @classmethod
    def of(cls, model: ServingModel) -> ModelRef:
        return cls(name=model.meta.name, version=model.meta.version)


class PredictTimings(BaseModel):
    decode_ms: float = Field(description="reading and decoding the upload")
    detect_ms: float = Field(description="finding and aligning the face")
    preprocess_ms: float = Field(description="crop, resize and normalise")
    queue_ms: float = Field(description="waiting in the dynamic batcher")
    inference_ms: float = Field(description="the batched model run this image was part of")
    total_ms: float = Field(description="from the start of image intake to the response")


class PredictionResponse(BaseModel):
    label: str = Field(description="predicted class id")
    name: str = Field(description="display name of the predicted class")
    probability: float = Field(description="probability of the predicted class")
    probabilities: list[ClassProbability] = Field(description="every class, most probable first")
    face_box: FaceBox
    faces: list[DetectedFace] = Field(
        description="every face found, preferred (largest, most central) first"
    )
    face_index: int | None = Field(
        description="which of `faces` was classified; null: the whole image"
    )
    open_set: OpenSetVerdict | None = Field(
        description="null when the bundle has no open-set calibration"
    )
    image: ImageInfo
    model: ModelRef
    batch_size: int = Field(description="how many requests shared this image's model run")
    timings: PredictTimings

    @classmethod
    def build(
        cls, model: ServingModel, image: DecodedImage, face: FaceChoice, result: Classification
    ) -> PredictionResponse:
        ranked = rank_classes(model, result.probabilities)
        top = ranked[0]
        return cls(
            label=top.id,
            name=top.name,
            probability=top.probability,
            probabilities=ranked,
            face_box=FaceBox.of(face),
            faces=[
                DetectedFace(
                    x=f.box.x, y=f.box.y, width=f.box.width, height=f.box.height, score=f.score
                )
                for f in face.faces
            ],
            face_index=face.index,
            open_set=OpenSetVerdict.judge(model.open_set, result.open_set_score)
            if model.open_set is not None and result.open_set_score is not None
            else None,
            image=ImageInfo.of(image),
            model=ModelRef.of(model),
            batch_size=result.batch.batch_size,
            timings=PredictTimings(
                decode_ms=image.decode_ms,
                detect_ms=face.detect_ms,
                preprocess_ms=result.preprocess_ms,
                queue_ms=result.batch.queue_ms,
                inference_ms=result.batch.inference_ms,
                total_ms=(time.perf_counter() - image.received_at) * 1000,
            ),
        )


class RuntimeInfo(BaseModel):
    provider: str = Field(description="ONNX Runtime execution provider in use")
    max_batch_size: int
    batch_timeout_ms: float
    threads: int = Field(description="intra-op threads (0 = one per core)")
    files_verified: int = Field(description="bundle files whose sha256 matched meta.json")
    precision: Literal["fp32", "int8"] = Field(
        description="the ONNX graph serving /predict and the perturbation methods (occlusion, "
        "LIME, RISE), from the precision setting; gradient methods always run the FP32 twin"
    )
    onnx_file: str = Field(description="the bundle's ONNX file that serves")
    parity_max_abs_diff: float = Field(description="ONNX vs twin on the probe input")
    parity_tolerance: float = Field(
        description="largest allowed |logit difference| at load time: the bundle's FP32 "
        "tolerance, or for INT8 its precision.int8.parity.tolerance (and labels must agree)"
    )
    load_ms: float
    warmup_ms: float
    loaded_at: datetime
    open_set: OpenSetRuleInfo | None = Field(
        description="the 'none of the classes' decision in force; null without calibration"
    )


class ModelResponse(BaseModel):
    """The bundle's meta.json as loaded, and how it runs."""

    meta: BundleMeta
    runtime: RuntimeInfo


class HealthResponse(BaseModel):
    status: Literal["ok"] = "ok"


class ReadinessResponse(BaseModel):
    status: Literal["ready"] = "ready"
    model: ModelRef
    provider: str


class HeatmapGrid(BaseModel):
    """The heatmap in the coordinates of the uploaded image, 0 outside the face: row ``r``,
    column ``c`` is image pixel ``(c * image width / width, r * image height / height)``; the
    grid is the image's own size unless a side exceeds 256, then scaled down to fit."""

    width: int
    height: int
    signed: bool = Field(
        description="false: values in [0, 1], larger = more important; true: values in "
        "[-1, 1], positive = evidence for the target class, negative = against it"
    )
    value_range: tuple[float, float]
    units: str = Field(description="what values x scale measure")
    scale: float = Field(description="the largest raw magnitude: values x scale are in units")
    negligible: bool = Field(
        description="true when scale is below 1e-4 (the model's numerical noise): the map "
        "holds no evidence, and values are the raw ones (about 0), not stretched by 1 / scale"
    )
    values: list[list[float]] = Field(description="rows, top to bottom, 4 decimals")


class ExplainTimings(BaseModel):
    decode_ms: float
    detect_ms: float = Field(description="finding and aligning the face")
    preprocess_ms: float
    explain_ms: float = Field(description="computing the heatmap (0 when it came from the cache)")
    total_ms: float


class ExplanationResponse(BaseModel):
    """A heatmap for one class, with the prediction it explains and the parameters used."""

    method: str
    target: ClassProbability = Field(description="the class explained")
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
    timings: ExplainTimings


class JobStatus(BaseModel):
    """A job (POST /jobs/{method}): where it stands and, once done, its answer."""

    id: str = Field(description="the job's id: GET /jobs/{id}")
    method: str = Field(description="the explanation method, or maximize")
    state: Literal["queued", "running", "done", "failed", "cancelled"]
    progress: float = Field(ge=0, le=1, description="share of the work done (1 when done)")
    parameters: dict[str, Any] = Field(description="the method's parameters, as checked")
    created_at: float = Field(description="when the job was made (Unix time, s)")
    queue_wait_s: float = Field(description="time waiting for an explanation turn (so far)")
    elapsed_s: float = Field(description="time running (so far): 0 while queued")
    remaining_s: float | None = Field(
        description="estimated time until done, from progress so far; null while unknown"
    )
    error: ErrorDetail | None = Field(
        None, description="why the job failed or was cancelled (code and message)"
    )
    result: dict[str, Any] | None = Field(
        None,
        description="once done: the synchronous call's JSON answer (format=json); also on "
        "GET /jobs/{id}/result",
    )


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


class MethodsResponse(BaseModel):
    """Every explanation method the service runs, in the page's order."""

    common_parameters: list[str] = Field(
        description="query parameters every method takes: target, format, detect, face"
    )
    methods: list[MethodInfo]


_ERROR_DESCRIPTIONS = {
    400: "empty or corrupt upload",
    401: "API key missing or wrong",
    404: "no such explanation method or job, or nothing stored to answer with",
    409: "the job has no result (yet)",
    413: "upload or image too large",
    415: "not a JPEG, PNG, WebP or BMP image",
    422: "invalid request or image too small",
    429: "too many jobs queued or running",
    503: "model not ready, or too many requests in flight",
}


def error_responses(*statuses: int) -> dict[int | str, dict[str, Any]]:
    """OpenAPI ``responses`` entries for the given error statuses, listing their codes."""
    codes = all_error_codes()
    responses: dict[int | str, dict[str, Any]] = {}
    for status in statuses:
        names = sorted(code for code, code_status in codes.items() if code_status == status)
        description = _ERROR_DESCRIPTIONS.get(status, "error")
        responses[status] = {
            "model": ErrorResponse,
            "description": f"{description} (codes: {', '.join(names)})",
        }
    return responses
