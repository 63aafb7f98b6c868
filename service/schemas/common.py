"""Shapes every answer shares: errors, classes, the face box, the image, the model."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Literal

import numpy as np
from pydantic import BaseModel, Field

from service.errors import all_error_codes
from service.faces.choice import FaceChoice
from service.inference.model import ServingModel
from service.intake.images import DecodedImage


class ErrorDetail(BaseModel):
    code: str = Field(description="stable machine-readable error code (docs/api.md: Error codes)")
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


_ERROR_DESCRIPTIONS = {
    400: "empty or corrupt upload",
    401: "API key missing or wrong",
    404: "no such model, explanation method or job, or nothing stored to answer with",
    409: "the job has no result (yet)",
    413: "upload or image too large",
    415: "not a JPEG, PNG, WebP or BMP image",
    422: "invalid request or image too small",
    429: "too many jobs queued or running, or event streams open",
    503: "model not ready or unavailable, or too many requests in flight",
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
