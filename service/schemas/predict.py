"""``POST /predict``'s answer: the label, every class's probability, the stranger verdict."""

from __future__ import annotations

import time
from typing import Literal

from pydantic import BaseModel, Field

from service.bundle.open_set import OpenSetRule
from service.faces.choice import FaceChoice
from service.inference.model import Classification, ServingModel
from service.intake.images import DecodedImage
from service.schemas.common import (
    ClassProbability,
    DetectedFace,
    FaceBox,
    ImageInfo,
    ModelRef,
    rank_classes,
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
