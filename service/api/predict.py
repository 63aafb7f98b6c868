"""POST /predict: which of the classes is this face?"""

from __future__ import annotations

from fastapi import APIRouter, Depends

from service.api.deps import ImageDep, ModelDep, ModelInputDep, api_key_guard, in_flight_slot
from service.api.placement import ON_PREDICT
from service.schemas.common import error_responses
from service.schemas.predict import PredictionResponse

router = APIRouter(tags=["predict"], dependencies=[Depends(api_key_guard), Depends(in_flight_slot)])


@router.post(
    "/predict",
    summary="Classify a face image",
    responses=error_responses(400, 401, 404, 413, 415, 422, 503),
    dependencies=[ON_PREDICT],
)
async def predict(model: ModelDep, image: ImageDep, inputs: ModelInputDep) -> PredictionResponse:
    """Find the face, then its label, display name, the probability of every class and whether
    it is one of the classes at all (``open_set``)."""
    result = await model.classify(inputs)
    return PredictionResponse.build(model, image, inputs.face, result)
