"""``meta.json["face_alignment"]``: where the landmarks of the training crops sit.

Training measures the template (``training/alignment.py``) and the service crops every face
found in a photo onto it (``service.faces``), so the model sees the framing it was trained on.
"""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field


class AlignmentSpec(BaseModel):
    """``meta.json["face_alignment"]``: the landmark template and the crop size."""

    model_config = ConfigDict(extra="allow", frozen=True)

    detector: str = "dlib-hog-frontal"
    landmarks: str = "dlib-5-point"
    points: list[tuple[float, float]] = Field(min_length=5, max_length=5)
    width: int = Field(gt=0)
    height: int = Field(gt=0)
