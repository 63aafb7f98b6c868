"""Explanations: one method's answer (``POST /explain/{method}``) and the list of methods."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, Field

from service.render.upload import HeatmapGrid
from service.schemas.common import ClassProbability, FaceBox, ImageInfo, ModelRef


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
