"""POST /saliency, /occlusion, /lime: why the model chose a class, as a heatmap.

Each explains the face ``/predict`` classifies (``FaceDep``: query parameters ``detect`` and
``face``) and lays the map back onto the upload through the face's alignment. Each takes the
common query parameters ``target`` (class id; default: the predicted class) and ``format``
(json | png | overlay) plus its methods' own parameters, whose defaults
and bounds come from the methods' ``Params`` models (``service.explain``), so out-of-range
values are 422 ``validation_error`` saying the limit. ``batch_size`` is not offered: it changes
speed and memory, never the map. Perturbation methods send their forward passes through the
engine's inference thread (``Engine.infer``), where they queue with ``/predict`` batches.
A request whose client hangs up (``ClientDep``) leaves the explanation queue, or stops at its
next batch, and is counted as 499 in ``/metrics``.
Results are kept in a bounded LRU keyed by model, model input, method, parameters and target,
so switching ``format`` or re-running is free.
"""

from __future__ import annotations

import asyncio
import copy
import dataclasses
import time
from collections.abc import Iterable
from typing import Annotated, Any, Literal, NoReturn

import numpy as np
from fastapi import APIRouter, Depends, Query
from fastapi.exceptions import RequestValidationError
from fastapi.responses import Response
from pydantic import BaseModel, Field, ValidationError, create_model
from starlette.concurrency import run_in_threadpool

from ..bundle import ONNX_FILE
from ..cancellation import Cancellation
from ..deps import (
    ClientDep,
    FaceDep,
    ImageDep,
    ModelDep,
    api_key_guard,
    explanation_slot,
    in_flight_slot,
)
from ..explain import (
    EXPLAINERS,
    GRADIENT_METHODS,
    ExplainError,
    Heatmap,
    ModelHandle,
    array_digest,
    cache_key,
)
from ..common.lru import LruCache
from ..explain.render import (
    MAX_RENDER_PIXELS,
    as_rows,
    blend_png,
    render_factor,
    rgba_png,
    scaled_size,
)
from ..faces import AlignedFace, FaceChoice
from ..images import DecodedImage
from ..model import ServingModel
from ..schemas import ClassProbability, FaceBox, ImageInfo, ModelRef, error_responses

# Not exposed over HTTP: it trades memory for speed and never changes the map.
SERVER_SIDE_PARAMS = frozenset({"batch_size"})
COMMON_PARAMS = frozenset({"target", "format"})
# Longest side of the JSON grid: the image's own size up to this, scaled down beyond it.
MAX_JSON_SIDE = 256
CACHE_ENTRIES = 64
PNG_MEDIA_TYPE = "image/png"
# On PNG answers: "true" when the map is negligible (drawn fully transparent), as in JSON.
NEGLIGIBLE_HEADER = "X-Heatmap-Negligible"

Format = Literal["json", "png", "overlay"]

# Keys hold the model's sha256, so apps serving different bundles never share entries.
CACHE = LruCache(CACHE_ENTRIES)

router = APIRouter(
    tags=["explain"],
    dependencies=[Depends(api_key_guard), Depends(in_flight_slot), Depends(explanation_slot)],
)


def _query_model(name: str, methods: Iterable[str], **extra: Any) -> type[BaseModel]:
    """A query-parameter model: ``target``, ``format``, ``extra`` fields, and every HTTP-facing
    field of the ``methods``' ``Params`` with its default, bounds and description."""
    fields: dict[str, Any] = {
        "target": (
            str | None,
            Field(None, description="class id to explain (default: the predicted class)"),
        ),
        "format": (
            Format,
            Field(
                "json",
                description="json: the heatmap as numbers in image coordinates with the "
                "prediction and parameters used; png: a transparent RGBA heatmap the size of "
                "the upload; overlay: the upload with the heatmap blended in (RGB PNG)",
            ),
        ),
        **extra,
    }
    methods = list(methods)
    for method in methods:
        for field_name, info in EXPLAINERS[method].Params.model_fields.items():
            if field_name in SERVER_SIDE_PARAMS or field_name in fields:
                continue
            if len(methods) > 1:  # say which method a parameter belongs to
                info = copy.copy(info)
                info.description = f"{info.description} ({method} only)"
            fields[field_name] = (info.annotation, info)
    # Unknown names are ignored, as everywhere in the API: other dependencies (the face choice's
    # ``detect`` and ``face``) read their own query parameters from the same query string.
    return create_model(name, **fields)


SaliencyQuery = _query_model(
    "SaliencyQuery",
    GRADIENT_METHODS,
    method=(
        Literal[GRADIENT_METHODS],  # type: ignore[valid-type]
        Field("gradient", description="gradient, smoothgrad, integrated_gradients or gradcam"),
    ),
)
OcclusionQuery = _query_model("OcclusionQuery", ["occlusion"])
LimeQuery = _query_model("LimeQuery", ["lime"])


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


RESPONSES: dict[int | str, dict[str, Any]] = {
    200: {
        "content": {PNG_MEDIA_TYPE: {}},
        "description": "JSON (format=json), or a PNG (format=png: RGBA heatmap; overlay: RGB), "
        f"the upload's size up to {MAX_RENDER_PIXELS} pixels and scaled down to them beyond; "
        f"its {NEGLIGIBLE_HEADER} header is true when the map is negligible (nothing drawn)",
        "headers": {
            NEGLIGIBLE_HEADER: {
                "description": "true when the map is negligible (JSON's heatmap.negligible)",
                "schema": {"type": "string", "enum": ["true", "false"]},
            }
        },
    },
    **error_responses(400, 401, 413, 415, 422, 503),
}


@router.post(
    "/saliency",
    summary="Gradient heatmap",
    description="Gradients of the class score on the differentiable twin: plain gradient "
    "(Simonyan et al. 2014), SmoothGrad, integrated gradients or Grad-CAM. Each method's "
    "parameters apply to it alone; sending another method's parameter is a 422.",
    responses=RESPONSES,
)
async def saliency(
    model: ModelDep,
    image: ImageDep,
    face: FaceDep,
    query: Annotated[SaliencyQuery, Query()],  # type: ignore[valid-type]
    cancellation: ClientDep,
) -> ExplanationResponse:
    method = query.method
    own = set(EXPLAINERS[method].Params.model_fields)
    foreign = sorted(query.model_fields_set - own - COMMON_PARAMS - {"method"})
    if foreign:
        _reject(
            ("query", foreign[0]),
            f"{', '.join(foreign)} does not apply to method={method}; its parameters: "
            f"{', '.join(sorted(own - SERVER_SIDE_PARAMS)) or 'none'}",
        )
    return await _explain(model, image, face, method, query, cancellation, own)


@router.post(
    "/occlusion",
    summary="Occlusion heatmap",
    description="Hide a square patch at every position (batched forward passes on the ONNX "
    "model) and map how much the target's score drops: positive where hiding the patch lowers "
    "it, negative where it raises it.",
    responses=RESPONSES,
)
async def occlusion(
    model: ModelDep,
    image: ImageDep,
    face: FaceDep,
    query: Annotated[OcclusionQuery, Query()],  # type: ignore[valid-type]
    cancellation: ClientDep,
) -> ExplanationResponse:
    return await _explain(model, image, face, "occlusion", query, cancellation)


@router.post(
    "/lime",
    summary="LIME heatmap",
    description="Switch SLIC superpixels on and off at random (batched forward passes on the "
    "ONNX model), fit a weighted linear model of the target's score, and give each superpixel "
    "its weight. The same seed gives the same map.",
    responses=RESPONSES,
)
async def lime(
    model: ModelDep,
    image: ImageDep,
    face: FaceDep,
    query: Annotated[LimeQuery, Query()],  # type: ignore[valid-type]
    cancellation: ClientDep,
) -> ExplanationResponse:
    return await _explain(model, image, face, "lime", query, cancellation)


async def _explain(
    model: ServingModel,
    image: DecodedImage,
    face: FaceChoice,
    method: str,
    query: BaseModel,
    cancellation: Cancellation,
    own: Iterable[str] | None = None,
) -> Any:
    own = set(own if own is not None else EXPLAINERS[method].Params.model_fields)
    params = {name: value for name, value in query.model_dump().items() if name in own}
    target = _class_index(model, query.target)  # type: ignore[attr-defined]

    started = time.perf_counter()
    x = await run_in_threadpool(model.preprocess, face.aligned.crop)  # what /predict classifies
    preprocess_ms = (time.perf_counter() - started) * 1000

    key = cache_key(
        image_digest=array_digest(x),
        method=method,
        params=params,
        target=target,
        model_digest=model.meta.files[ONNX_FILE].sha256,
    )
    started = time.perf_counter()
    heatmap = CACHE.get(key)
    cached = heatmap is not None
    if heatmap is None:
        heatmap = await _compute(model, method, x, target, params, cancellation)
        CACHE.put(key, heatmap)
    explain_ms = 0.0 if cached else (time.perf_counter() - started) * 1000

    fmt = query.format  # type: ignore[attr-defined]
    if fmt in ("png", "overlay"):
        png = await run_in_threadpool(_render_png, fmt, image, face.aligned, heatmap)
        negligible = {NEGLIGIBLE_HEADER: str(heatmap.negligible).lower()}
        return Response(png, media_type=PNG_MEDIA_TYPE, headers=negligible)
    grid = await run_in_threadpool(_json_grid, heatmap, face.aligned, image.rgb.size)
    timings = ExplainTimings(
        decode_ms=image.decode_ms,
        detect_ms=face.detect_ms,
        preprocess_ms=preprocess_ms,
        explain_ms=explain_ms,
        total_ms=(time.perf_counter() - image.received_at) * 1000,
    )
    return _response(model, image, face, method, heatmap, grid, cached, timings)


def _render_png(fmt: Format, image: DecodedImage, aligned: AlignedFace, heatmap: Heatmap) -> bytes:
    """The heatmap laid back from the face crop onto the upload, as ``fmt`` (png | overlay), the
    upload's size up to ``MAX_RENDER_PIXELS`` and scaled down to them beyond."""
    factor = render_factor(image.rgb.size)
    placed = _placed(heatmap, aligned, scaled_size(image.rgb.size, factor), factor)
    if fmt == "overlay":
        return blend_png(image.rgb, placed, heatmap.signed)
    return rgba_png(placed, heatmap.signed)


async def _compute(
    model: ServingModel,
    method: str,
    x: np.ndarray,
    target: int | None,
    params: dict[str, Any],
    cancellation: Cancellation,
) -> Heatmap:
    """Run the method on a worker thread; its forward passes go to the inference thread. Once
    the client has gone it stops at the next batch with ``Cancelled`` (answered 499)."""
    loop = asyncio.get_running_loop()

    def forward(batch: np.ndarray) -> np.ndarray:
        infer = model.engine.infer(batch, cancellation)
        return asyncio.run_coroutine_threadsafe(infer, loop).result()

    handle = ModelHandle(forward, model.twin, model.meta.gradcam_layer, cancellation)
    explainer = EXPLAINERS[method](handle)
    try:
        return await run_in_threadpool(lambda: explainer.attribute(x, target, **params))
    except ValidationError as exc:  # a rule across parameters, e.g. occlusion's stride <= window
        raise RequestValidationError(
            [{**error, "loc": ("query", *error["loc"])} for error in exc.errors()]
        ) from exc
    except ExplainError as exc:  # e.g. Grad-CAM at a layer the twin does not have
        _reject(("query",), str(exc))


def _class_index(model: ServingModel, class_id: str | None) -> int | None:
    if class_id is None:
        return None
    ids = [info.id for info in model.meta.classes]
    if class_id not in ids:
        _reject(("query", "target"), f"{class_id!r} is not a class id; valid: {', '.join(ids)}")
    return ids.index(class_id)


def _reject(loc: tuple[str, ...], message: str) -> NoReturn:
    raise RequestValidationError([{"loc": loc, "msg": message, "type": "value_error"}])


def _json_grid(heatmap: Heatmap, aligned: AlignedFace, image_size: tuple[int, int]) -> HeatmapGrid:
    """The heatmap laid back onto the upload, on a grid of the image's size scaled down to at
    most ``MAX_JSON_SIDE`` a side."""
    factor = min(1.0, MAX_JSON_SIDE / max(image_size))
    grid_size = scaled_size(image_size, factor)
    on_grid = _placed(heatmap, aligned, grid_size, factor)
    return HeatmapGrid(
        width=grid_size[0],
        height=grid_size[1],
        signed=heatmap.signed,
        value_range=heatmap.value_range,
        units=heatmap.units,
        scale=heatmap.scale,
        negligible=heatmap.negligible,
        values=as_rows(on_grid),
    )


def _placed(
    heatmap: Heatmap, aligned: AlignedFace, size: tuple[int, int], factor: float
) -> np.ndarray:
    """The map on a grid of ``size``: the upload's pixels times ``factor`` (<= 1)."""
    # grid cell -> image pixel (divide by the factor) -> crop pixel (the face's matrix)
    to_crop = aligned.matrix * np.array([[1 / factor, 1 / factor, 1.0]])
    return dataclasses.replace(aligned, matrix=to_crop).to_image(heatmap.values, size)


def _response(
    model: ServingModel,
    image: DecodedImage,
    face: FaceChoice,
    method: str,
    heatmap: Heatmap,
    grid: HeatmapGrid,
    cached: bool,
    timings: ExplainTimings,
) -> ExplanationResponse:
    classes = model.meta.classes
    probabilities = heatmap.probabilities
    ranked = [
        ClassProbability(
            id=classes[i].id, name=classes[i].name, probability=float(probabilities[i])
        )
        for i in np.argsort(-probabilities, kind="stable")
    ]
    target = classes[heatmap.target]
    return ExplanationResponse(
        method=method,
        target=ClassProbability(
            id=target.id, name=target.name, probability=float(probabilities[heatmap.target])
        ),
        label=ranked[0].id,
        name=ranked[0].name,
        probability=ranked[0].probability,
        probabilities=ranked,
        parameters=heatmap.params,
        heatmap=grid,
        face_box=FaceBox.of(face.box, "whole_image" if face.index is None else "detector"),
        face_index=face.index,
        image=ImageInfo.of(image),
        model=ModelRef.of(model),
        cached=cached,
        timings=timings,
    )
