"""``POST /predict``'s answer: the label, every class's probability, the stranger verdict."""

from __future__ import annotations

import time
from typing import Literal
from urllib.parse import quote

from pydantic import BaseModel, Field

from service.bundle.evidence import FACES_PER_CLASS, NearFace, TrainingFaces
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


EVIDENCE_PATH = "/evidence"


class TrainingFace(BaseModel):
    """A training face near this one, from the bundle's train split."""

    file: str = Field(
        description="the training image, relative to the data root, as the bundle's split.json "
        "lists it (e.g. tom_hanks/1234.png)"
    )
    cosine: float = Field(
        description="cosine similarity of its embedding to this face's, in [-1, 1]; 1 = the "
        "same point"
    )
    thumbnail: str | None = Field(
        description="URL of its thumbnail (GET /evidence/{class_id}/{file name}, a JPEG of at "
        "most 112 px); null when the service serves no thumbnails (see `thumbnails_note`)"
    )


class NearestTrainingFace(TrainingFace):
    """The nearest training face of all: the one the score's nearest_training_face_cosine part
    is the cosine to."""

    class_id: str = Field(description="its class id")
    name: str = Field(description="its class's display name")


class ClassEvidence(BaseModel):
    class_id: str = Field(description="class id")
    name: str = Field(description="display name")
    faces: list[TrainingFace] = Field(
        description=f"the class's {FACES_PER_CLASS} training faces nearest to this face, most "
        "similar first (equal cosines: in the train list's order)"
    )


class OpenSetEvidence(BaseModel):
    """The training faces behind the score: the gallery of training embeddings the bundle ships
    (one row per file of its train split), searched with this face's embedding."""

    nearest: NearestTrainingFace
    per_class: list[ClassEvidence] = Field(
        description="every class with its nearest training faces, the class with the most "
        "similar face first (ties: class order)"
    )
    thumbnails: bool = Field(
        description="whether GET /evidence serves the faces' thumbnails (each face's "
        "`thumbnail` URL)"
    )
    thumbnails_note: str | None = Field(
        description="why there are no thumbnails and how to configure them; null when there are"
    )

    @classmethod
    def of(
        cls, model: ServingModel, faces: TrainingFaces, result: Classification
    ) -> OpenSetEvidence | None:
        if result.similarities is None:
            return None
        found = faces.evidence(result.similarities)
        served = faces.images is not None
        classes = model.meta.classes

        def face(near: NearFace) -> dict[str, object]:
            url = None
            if served:
                class_id = quote(classes[near.class_index].id, safe="")
                file = quote(faces.name_of(near.file), safe="")
                url = f"{EVIDENCE_PATH}/{class_id}/{file}{model.url_query}"
            return {"file": near.file, "cosine": near.cosine, "thumbnail": url}

        nearest = classes[found.nearest.class_index]
        return cls(
            nearest=NearestTrainingFace(
                class_id=nearest.id, name=nearest.name, **face(found.nearest)
            ),
            per_class=[
                ClassEvidence(
                    class_id=classes[index].id,
                    name=classes[index].name,
                    faces=[TrainingFace(**face(near)) for near in near_faces],
                )
                for index, near_faces in found.per_class
            ],
            thumbnails=served,
            thumbnails_note=faces.images_note or None,
        )


class OpenSetVerdict(OpenSetRuleInfo):
    """Is the face one of the model's classes at all? A softmax always names a class, even for a
    stranger; this says whether to believe it."""

    known: bool = Field(description="true: one of the classes; false: most likely none of them")
    score: float = Field(description="this face's score (see definition)")
    parts: dict[str, float] = Field(
        description="the parts the score was made of, by name (max_softmax_probability, "
        "max_logit, nearest_training_face_cosine): with meta.json open_set.fusion (GET /model) "
        "they give the score again"
    )
    evidence: OpenSetEvidence | None = Field(
        description="the training faces nearest to this face, per class, and the nearest of "
        "all (whose cosine is the nearest_training_face_cosine part); null when the bundle has "
        "no gallery of training faces or no split.json to name them by"
    )

    @classmethod
    def judge(
        cls,
        rule: OpenSetRule,
        score: float,
        parts: dict[str, float],
        evidence: OpenSetEvidence | None = None,
    ) -> OpenSetVerdict:
        info = OpenSetRuleInfo.of(rule).model_dump()
        return cls(
            known=score >= rule.threshold, score=score, parts=parts, evidence=evidence, **info
        )

    @classmethod
    def for_result(cls, model: ServingModel, result: Classification) -> OpenSetVerdict | None:
        """The verdict on ``result``; None when the model has no open-set rule."""
        if model.open_set is None or result.open_set_score is None:
            return None
        faces = model.training_faces
        evidence = OpenSetEvidence.of(model, faces, result) if faces is not None else None
        return cls.judge(
            model.open_set, result.open_set_score, result.open_set_parts or {}, evidence
        )


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
            open_set=OpenSetVerdict.for_result(model, result),
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
