"""``POST /explain/evaluate``: grade any map against the served model.

A researcher's map -- from captum, pytorch-grad-cam or their own code -- and the photo it
explains go through the same intake, face detection and framing as ``POST /explain/{method}``;
the map is laid on the model input (``explanations.map_on_model_input``: at the upload's size,
the JSON answer's grid, or the model input's) and graded exactly as the service grades its own
maps (``service.explain.quality``): the answer's ``quality`` is the report an explanation
answer carries. The route is registered before ``/explain/{method}``, whose template would
otherwise take the path.
"""

from __future__ import annotations

import time
from typing import Annotated

from fastapi import APIRouter, Depends, File, UploadFile
from starlette.concurrency import run_in_threadpool

from service import explanations
from service.api.deps import (
    ClientDep,
    ExplanationCacheDep,
    ImageDep,
    ModelDep,
    ModelInputDep,
    StateDep,
    api_key_guard,
)
from service.api.explain import (
    EXPLANATION_DEPENDENCIES,
    ContrastQuery,
    TargetQuery,
    question_of,
)
from service.api.placement import ON_EXPLAIN
from service.common.softmax import softmax
from service.intake.images import read_upload
from service.intake.maps import MAX_MAP_BYTES, read_map
from service.schemas.common import ClassProbability, FaceBox, ImageInfo, ModelRef, error_responses
from service.schemas.explanation import (
    EvaluationResponse,
    EvaluationTimings,
    MapInfo,
    QualityInfo,
)

MAP_HELP = (
    "the map to grade: JSON (a list of rows of numbers, or an object with 'values', such as "
    "an explanation answer's heatmap) or a greyscale PNG; at the upload's size, the size of "
    "the grid a JSON answer gives for this upload, or the model input's; larger values = "
    f"more important; at most {MAX_MAP_BYTES // (1024 * 1024)} MiB"
)
router = APIRouter(tags=["explain"])


@router.post(
    "/explain/evaluate",
    summary="Grade any map against the served model",
    description="The photo (the same intake, face detection and framing as the explanation "
    "endpoints) and a map of it made anywhere: the same `quality` report an explanation "
    "answer carries (deletion and insertion areas against a random map's, their ratios, a "
    "verdict by the rule GET /explain states). Costs the prediction and one to three "
    "batched forward passes.",
    responses=error_responses(400, 401, 404, 413, 415, 422, 503),
    dependencies=[Depends(api_key_guard), *EXPLANATION_DEPENDENCIES, ON_EXPLAIN],
)
async def evaluate(
    state: StateDep,
    model: ModelDep,
    image: ImageDep,
    inputs: ModelInputDep,
    cache: ExplanationCacheDep,
    cancellation: ClientDep,
    map: Annotated[UploadFile, File(description=MAP_HELP)],
    target: TargetQuery = None,
    contrast: ContrastQuery = None,
) -> EvaluationResponse:
    question = question_of(model, target, contrast)
    values = await run_in_threadpool(read_map, await read_upload(map, MAX_MAP_BYTES))
    side = (int(inputs.x.shape[1]), int(inputs.x.shape[2]))
    on_input, space = await run_in_threadpool(
        explanations.map_on_model_input, values, inputs.face.aligned, image.rgb.size, side
    )
    started = time.perf_counter()
    report, objective, logits, scores = await run_in_threadpool(
        explanations.evaluate, model, inputs, on_input, question, cache, cancellation
    )
    quality_ms = (time.perf_counter() - started) * 1000
    state.metrics.verdicts.labels("evaluate", report.verdict).inc()
    probabilities = softmax(logits)
    predicted = int(probabilities.argmax())
    info = model.meta.classes[objective.target]
    return EvaluationResponse(
        target=ClassProbability(
            id=info.id, name=info.name, probability=float(probabilities[objective.target])
        ),
        explains=explanations.objective_info(model, objective, logits, scores),
        label=model.meta.classes[predicted].id,
        probability=float(probabilities[predicted]),
        quality=QualityInfo.of(report),
        map=MapInfo(width=values.shape[1], height=values.shape[0], space=space),
        face_box=FaceBox.of(inputs.face),
        face_index=inputs.face.index,
        image=ImageInfo.of(image),
        model=ModelRef.of(model),
        timings=EvaluationTimings(
            decode_ms=image.decode_ms,
            detect_ms=inputs.face.detect_ms,
            preprocess_ms=inputs.preprocess_ms,
            quality_ms=quality_ms,
            total_ms=(time.perf_counter() - image.received_at) * 1000,
        ),
    )
