"""POST /predict: which of the classes is this face?"""
from __future__ import annotations

from fastapi import APIRouter, Depends

from ..deps import ImageDep, ModelDep, api_key_guard, in_flight_slot
from ..preprocess import Box
from ..schemas import PredictionResponse, error_responses

router = APIRouter(tags=["predict"], dependencies=[Depends(api_key_guard), Depends(in_flight_slot)])


@router.post(
    "/predict",
    summary="Classify a face image",
    responses=error_responses(400, 401, 413, 415, 422, 503),
)
async def predict(model: ModelDep, image: ImageDep) -> PredictionResponse:
    """Label, display name and the probability of every class for the uploaded image."""
    box = Box.whole(image.rgb)  # face detection will choose the box here
    result = await model.classify(image, box)
    return PredictionResponse.build(model, image, box, result)
