"""Explanations: why the model chose a class, as a heatmap, for every method of the registry.

- ``GET /explain``: every method (``service.explain.METHODS``) with what it shows, signed or
  not, units, value range, whether it needs the twin, and its parameters (JSON Schema);
- ``POST /explain/{method}``: run one, with the common query parameters ``target`` (class id;
  default: the predicted class) and ``format`` (json | png | overlay), the face choice's
  ``detect`` and ``face``, plus the method's own parameters; an unknown method is 404
  ``unknown_method``;
- ``POST /saliency`` (``method=`` one of the gradient methods), ``/occlusion``, ``/lime``: the
  same code path under the names they have always had.

Each explains the face ``/predict`` classifies (``ModelInputDep``) through the explanation use
case (``service.explanations``), which lays the map back onto the upload through the face's
alignment. Parameter defaults and bounds come from the methods' ``Params`` models, checked once
here (``method_params``), so out-of-range values are 422 ``validation_error`` saying the limit;
``batch_size`` is not offered: it changes speed and memory, never the map. A request whose
client hangs up (``ClientDep``) leaves the explanation queue, or stops at its next batch, and
is counted as 499 in ``/metrics``. Results are kept in the app's bounded LRU, keyed by model,
model input, method, parameters and target (and by API key, when keys are configured:
``ExplanationCacheDep``), so switching ``format`` or re-running is free. Every route takes its
explanation turn before any queued job (``explanation_slot``), and refuses a call that plans
more than ``max_passes_per_request`` forward passes (422 ``too_costly``) before it waits.
"""

from __future__ import annotations

import inspect
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Depends, Query, Request
from fastapi.responses import Response
from pydantic import Field
from starlette.concurrency import run_in_threadpool

from service import explanations
from service.api.deps import (
    ClientDep,
    ExplanationCacheDep,
    ImageDep,
    ModelDep,
    ModelIfReadyDep,
    ModelInputDep,
    StateDep,
    api_key_guard,
    class_index,
    explanation_slot,
    in_flight_slot,
)
from service.api.method_params import (
    SERVER_SIDE_PARAMS,
    alias_query,
    call_bounds,
    check_params,
    method_call,
    refuse_others,
)
from service.api.placement import ON_EXPLAIN, ON_GATEWAY
from service.common.cancellation import Cancellation
from service.errors import OpenSetUnavailable, UnknownClass
from service.explain import EXPLAINERS, GRADIENT_METHODS, Explainer
from service.explain.base import CallBounds, MethodCall
from service.explain.objective import OPEN_SET, Question
from service.explain.quality import PASSES, REPEAT_PASSES, RULE, VERDICTS
from service.inference.model import ModelInput, ServingModel
from service.intake.images import DecodedImage
from service.observability import tracing
from service.render.png import MAX_RENDER_PIXELS
from service.render.upload import NEGLIGIBLE_HEADER, PNG_MEDIA_TYPE, Format, render_png
from service.schemas.common import error_responses
from service.schemas.explanation import (
    ExplanationResponse,
    MethodInfo,
    MethodsResponse,
    QualityCost,
)
from service.state import ServiceState

COMMON_PARAMS = ("target", "contrast", "format", "quality", "detect", "face")
CACHE_ENTRIES = 64
# quality reports and random curves: a few hundred bytes each, up to 8 per face (the page's)
GRADE_CACHE_ENTRIES = 512
TargetQuery = Annotated[
    str | None,
    Query(
        description="class id to explain (default: the predicted class), or open_set: the "
        "open-set score, why the face is one of the classes or none of them"
    ),
]
ContrastQuery = Annotated[
    str | None,
    Query(
        description="a class id: explain why the target and not this class, the map of "
        "logit(target) - logit(contrast) (positive: evidence for the target over it)"
    ),
]


def question_of(
    model: ServingModel,
    target: str | None,
    contrast: str | None,
    explainer: type[Explainer] | None = None,
) -> Question:
    """The query's ``target`` and ``contrast`` as a ``Question``, checked before any work: class
    ids (422 ``unknown_class``), ``target=open_set`` for the open-set score (422
    ``open_set_unavailable`` on a model without one, or for an ``explainer`` that cannot
    explain it; no contrast with it), a contrast equal to the target refused. A contrast equal
    to a target left to the prediction is refused once the prediction is made."""
    contrast_index = None if contrast is None else class_index(model, contrast)
    if target == OPEN_SET:
        if model.open_set_score is None:
            raise OpenSetUnavailable(
                "this model has no open-set score to explain (its bundle has no open_set block)"
            )
        if explainer is not None and not explainer.explains_open_set:
            raise OpenSetUnavailable(
                f"{explainer.name} explains class logits, not the open-set score; ask another "
                "method for target=open_set"
            )
        return Question(None, contrast_index, open_set=True)
    target_index = None if target is None else class_index(model, target)
    if contrast_index is not None and contrast_index == target_index:
        raise UnknownClass(
            f"contrast={contrast} is the target itself: a contrast asks why the target and "
            "not another class; name a different one"
        )
    return Question(target_index, contrast_index)


FORMAT_HELP = (
    "json: the heatmap as numbers in image coordinates with the prediction and parameters "
    "used; png: a transparent RGBA heatmap the size of the upload; overlay: the upload with "
    "the heatmap blended in (RGB PNG)"
)
FormatQuery = Annotated[Format, Query(description=FORMAT_HELP)]
QualityQuery = Annotated[
    bool | None,
    Query(
        description="grade the map (the answer's quality; a PNG's X-Quality-Verdict header): "
        "true or false; default: the method's quality.default in GET /explain"
    ),
]

# Every explanation answer holds an explanation turn; the guard marks the routes as protected.
EXPLANATION_DEPENDENCIES = [Depends(in_flight_slot), Depends(explanation_slot)]
router = APIRouter(tags=["explain"])


@router.get(
    "/explain",
    summary="Every explanation method and its parameters",
    description="The methods `POST /explain/{method}` runs, in the page's order: what each "
    "shows, whether its map is signed, its units and value range, whether it needs the "
    "differentiable twin, its own query parameters as JSON Schema (defaults, bounds, "
    "choices), and whether the bundle (`model=`) can run it (`available`).",
    responses=error_responses(404, 503),
    dependencies=[ON_GATEWAY],
)
async def list_methods(state: StateDep, model: ModelIfReadyDep) -> MethodsResponse:
    bounds = call_bounds(state, model)
    return MethodsResponse(
        common_parameters=list(COMMON_PARAMS),
        quality_rule=RULE,
        methods=[_method_info(explainer, model, bounds) for explainer in EXPLAINERS.values()],
    )


def _method_info(
    explainer: type[Explainer], model: ServingModel | None, bounds: CallBounds | None
) -> MethodInfo:
    unavailable = None if bounds is None else explainer.unavailable(bounds)
    schema = explainer.Params.model_json_schema()
    for name in SERVER_SIDE_PARAMS:
        schema.get("properties", {}).pop(name, None)
    return MethodInfo(
        name=explainer.name,
        title=explainer.title,
        shows=explainer.shows,
        signed=explainer.signed,
        value_range=explainer.value_range,
        units=explainer.units,
        needs_twin=explainer.needs_twin,
        anytime=explainer.anytime,
        parameters=schema,
        quality=QualityCost(
            default=explainer.quality_by_default,
            passes=PASSES,
            repeat_passes=REPEAT_PASSES,
            signals=list(explainer.signal_names),
        ),
        sanity=None if model is None else explanations.sanity_note(model, explainer.name),
        explains=["class", "contrast"]
        + (
            ["open_set"]
            if explainer.explains_open_set
            and model is not None
            and model.open_set_score is not None
            else []
        ),
        contrast_signed=explainer.signed_for(Question(0, 1)),
        available=unavailable is None,
        unavailable=unavailable,
    )


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
            },
            explanations.QUALITY_HEADER: {
                "description": "the map's verdict (JSON's quality.verdict), when it was graded",
                "schema": {"type": "string", "enum": list(VERDICTS)},
            },
            explanations.SAMPLES_USED_HEADER: {
                "description": "a sampling method's samples used (JSON's samples.used)",
                "schema": {"type": "integer"},
            },
            explanations.SAMPLES_PLANNED_HEADER: {
                "description": "its samples planned (JSON's samples.planned)",
                "schema": {"type": "integer"},
            },
        },
    },
    **error_responses(400, 401, 404, 413, 415, 422, 503),
}


@router.post(
    "/explain/{method}",
    summary="Heatmap by any method",
    description="Runs one method of `GET /explain` on the face /predict classifies; its own "
    "query parameters, defaults and bounds are those `GET /explain` lists for it (another "
    "method's parameter is a 422). Methods:\n\n"
    + "\n".join(f"- `{name}`: {explainer.shows}" for name, explainer in EXPLAINERS.items()),
    responses={**RESPONSES, **error_responses(404)},
    dependencies=[
        Depends(api_key_guard),
        Depends(method_call),
        *EXPLANATION_DEPENDENCIES,
        ON_EXPLAIN,
    ],
)
async def explain(
    call: Annotated[MethodCall, Depends(method_call)],
    model: ModelDep,
    image: ImageDep,
    inputs: ModelInputDep,
    cache: ExplanationCacheDep,
    cancellation: ClientDep,
    state: StateDep,
    target: TargetQuery = None,
    contrast: ContrastQuery = None,
    format: FormatQuery = "json",
    quality: QualityQuery = None,
) -> ExplanationResponse:
    question = question_of(model, target, contrast, call.explainer)
    return await _explain(
        state, model, image, inputs, call, question, format, quality, cancellation, cache
    )


def _alias(path: str, methods: tuple[str, ...], summary: str, description: str) -> None:
    """Register ``path`` as ``POST /explain/{method}`` for ``methods`` (the first is the
    default ``method=``; a single method takes no ``method=``)."""
    extra: dict[str, Any] = {}
    if len(methods) > 1:
        # a Literal of the registry's names, built at run time: mypy reads only literal values
        choices = Literal[methods]  # type: ignore[valid-type]
        help_ = f"{', '.join(methods[:-1])} or {methods[-1]}"
        extra["method"] = (choices, Field(methods[0], description=help_))
    query_model = alias_query(f"{summary.split()[0]}Query", methods, **extra)

    async def endpoint(
        request: Request,
        state: StateDep,
        model: ModelDep,
        image: ImageDep,
        inputs: ModelInputDep,
        cache: ExplanationCacheDep,
        cancellation: ClientDep,
        query: Any,
        target: TargetQuery = None,
        contrast: ContrastQuery = None,
        format: FormatQuery = "json",
        quality: QualityQuery = None,
    ) -> ExplanationResponse:
        values = query.model_dump(exclude_unset=True)
        method = values.pop("method", methods[0])
        explainer = EXPLAINERS[method]
        question = question_of(model, target, contrast, explainer)
        refuse_others(request.query_params.keys(), method)
        call = check_params(explainer, values, call_bounds(state, model))
        return await _explain(
            state, model, image, inputs, call, question, format, quality, cancellation, cache
        )

    signature = inspect.signature(endpoint)
    hints = {
        "request": Request,
        "state": StateDep,
        "model": ModelDep,
        "image": ImageDep,
        "inputs": ModelInputDep,
        "cache": ExplanationCacheDep,
        "cancellation": ClientDep,
        "query": Annotated[query_model, Query()],
        "target": TargetQuery,
        "contrast": ContrastQuery,
        "format": FormatQuery,
        "quality": QualityQuery,
    }
    # FastAPI reads the endpoint's parameters through inspect, which honours __signature__;
    # typeshed does not declare that attribute on functions
    endpoint.__signature__ = signature.replace(  # type: ignore[attr-defined]
        parameters=[p.replace(annotation=hints[p.name]) for p in signature.parameters.values()],
        return_annotation=ExplanationResponse,
    )
    endpoint.__name__ = path.strip("/")
    router.post(
        path,
        summary=summary,
        description=description,
        responses=RESPONSES,
        dependencies=[Depends(api_key_guard), *EXPLANATION_DEPENDENCIES, ON_EXPLAIN],
    )(endpoint)


_alias(
    "/saliency",
    GRADIENT_METHODS,
    "Gradient heatmap",
    "Gradients of the class score on the differentiable twin: plain gradient "
    "(Simonyan et al. 2014), SmoothGrad, integrated gradients or Grad-CAM. Each method's "
    "parameters apply to it alone; sending another method's parameter is a 422. The same as "
    "POST /explain/{method}.",
)
_alias(
    "/occlusion",
    ("occlusion",),
    "Occlusion heatmap",
    "Hide a square patch at every position (batched forward passes on the ONNX model) and map "
    "how much the target's score drops: positive where hiding the patch lowers it, negative "
    "where it raises it. The same as POST /explain/occlusion.",
)
_alias(
    "/lime",
    ("lime",),
    "LIME heatmap",
    "Switch SLIC superpixels on and off at random (batched forward passes on the ONNX model), "
    "fit a weighted linear model of the target's score, and give each superpixel its weight. "
    "The same seed gives the same map. The same as POST /explain/lime.",
)


async def _explain(
    state: ServiceState,
    model: ServingModel,
    image: DecodedImage,
    inputs: ModelInput,
    call: MethodCall,
    question: Question,
    fmt: Format,
    quality: bool | None,
    cancellation: Cancellation,
    cache: explanations.ExplanationCache,
) -> Any:
    """The one code path of every explanation endpoint: the use case, answered as ``fmt``."""
    explanation = await run_explanation(
        state, model, inputs, call, question, quality, cancellation, cache
    )
    with tracing.span("render", {"celebxai.render.format": fmt}):
        if fmt in ("png", "overlay"):
            heatmap = explanation.heatmap
            face = inputs.face.aligned
            png = await run_in_threadpool(render_png, fmt, image.rgb, face, heatmap)
            headers = explanations.answer_headers(explanation)
            return Response(png, media_type=PNG_MEDIA_TYPE, headers=headers)
        return await run_in_threadpool(explanations.json_answer, model, image, inputs, explanation)


async def run_explanation(
    state: ServiceState,
    model: ServingModel,
    inputs: ModelInput,
    call: MethodCall,
    question: Question,
    quality: bool | None,
    cancellation: Cancellation,
    cache: explanations.ExplanationCache,
) -> explanations.Explanation:
    """The use case on a worker thread (graded as ``quality`` asks, else as the method does by
    default), its verdict counted in ``/metrics``: what every explanation route answers from,
    the Open Inference Protocol's extension (``service.api.v2``) included."""
    graded = explanations.wants_quality(call, quality)
    explanation = await run_in_threadpool(
        explanations.explain, model, inputs, call, question, cache, cancellation, None, graded
    )
    if explanation.quality is not None:
        state.metrics.verdicts.labels(call.name, explanation.quality.verdict).inc()
    return explanation
