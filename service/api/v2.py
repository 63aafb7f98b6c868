"""The Open Inference Protocol ("v2": KServe, Triton, MLServer, OpenVINO Model Server) beside
the service's own API, with an explanation extension (docs/v2.md).

- ``GET /v2``: server metadata, its extensions (``binary_tensor_data``, ``explain``);
- ``GET /v2/health/live``, ``/v2/health/ready``: liveness; readiness (the model loaded,
  checked, warmed up; 503 ``not_ready`` until then);
- ``GET /v2/models/{name}``, ``/v2/models/{name}/ready``: the model's inputs, outputs and
  classes; its readiness;
- ``POST /v2/models/{name}/infer``: ``/predict`` over the protocol. One input: the image as
  ``BYTES`` (its file's bytes, one element per image) or the model input as ``FP32``
  ``[N, 3, H, W]`` (already preprocessed as ``GET /model``'s ``input`` says); request
  parameters ``detect`` and ``face``; outputs the probabilities, label, display name and the
  open-set score and verdict;
- ``POST /v2/models/{name}/explain``: ``POST /explain/{method}`` over the protocol (one image):
  ``method`` and its parameters, ``target``, ``contrast``, ``quality``, ``detect``, ``face`` as
  request parameters; outputs the map (``FP32``, the JSON answer's grid), the prediction, and
  the quality report where there is one. ``POST /v1/models/{name}:explain`` is the same (the
  path KServe's ``InferenceRESTClient.explain`` posts to).

Each model route also answers under ``/v2/models/{name}/versions/{version}``. The work is that
of the service's own routes, by the same functions: image intake (``deps.decoded_image``), the
face choice and model input (``deps.image_input``; both through ``v2_inputs``; the tensors on
the wire: ``v2_tensors``), ``ServingModel.classify``, the explanation
use case (``explain.run_explanation``, ``explanations.json_answer``); the same API key, body
limit, in-flight and explanation turns, metrics, and placement on Ray (``Predict``,
``Explain``). Errors keep their statuses and codes, in the protocol's shape
(``{"error": "<code>: <message>"}``, ``service.http.errors``).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Callable
from typing import Annotated, Any, TypeVar

import numpy as np
from fastapi import APIRouter, Depends, Path, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import Response
from pydantic import BaseModel, ConfigDict, ValidationError
from starlette.concurrency import run_in_threadpool

from service import __version__, explanations
from service.api.deps import (
    ClientDep,
    DefaultModelDep,
    ExplanationCacheDep,
    StateDep,
    api_key_guard,
    explanation_slot,
    in_flight_slot,
    model_named,
)
from service.api.explain import question_of, run_explanation
from service.api.method_params import call_bounds, check_params, offered
from service.api.placement import ON_EXPLAIN, ON_GATEWAY, ON_PREDICT
from service.api.v2_inputs import IMAGE_INPUT, TENSOR_INPUT, face_params, model_inputs, read_input
from service.api.v2_tensors import (
    INFERENCE_HEADER,
    OCTET_STREAM,
    Output,
    answer,
    invalid,
)
from service.bundle.open_set import OpenSetRule
from service.errors import UnknownMethod, UnknownModel
from service.explain import EXPLAINERS, Explainer
from service.explain.base import MethodCall
from service.inference.model import Classification, ServingModel
from service.schemas.predict import OpenSetVerdict
from service.schemas.v2 import (
    InferenceError,
    InferenceRequest,
    InferenceResponse,
    MetadataTensor,
    ModelMetadata,
    ModelReady,
    ServerLive,
    ServerMetadata,
    ServerReady,
)
from service.state import ServiceState

SERVER_NAME = "celebxai"
EXTENSIONS = ["binary_tensor_data", "explain"]
PLATFORM = "onnxruntime_onnx"
INFER_OUTPUTS = ("probabilities", "label", "name")
OPEN_SET_OUTPUTS = ("open_set_score", "open_set_known")
EXPLAIN_METHOD = "method"

_ERRORS: dict[int | str, dict[str, Any]] = {
    status: {"model": InferenceError, "description": description}
    for status, description in {
        400: "malformed body, empty or corrupt image (codes as in docs/api.md)",
        401: "API key missing or wrong",
        404: "no such model, version or explanation method",
        413: "body or image too large",
        415: "an image that is not JPEG, PNG, WebP or BMP",
        422: "a request the protocol or the model cannot take: its datatype, shape, "
        "parameters; no face; an explanation too costly",
        503: "model not ready, or too many requests in flight",
    }.items()
}


def _errors(*statuses: int) -> dict[int | str, dict[str, Any]]:
    return {status: _ERRORS[status] for status in statuses}


def _body_schema() -> dict[str, Any]:
    """The request body in openapi.yaml: the request's JSON, or (binary data extension) its
    JSON followed by the inputs' bytes."""
    return {
        "requestBody": {
            "required": True,
            "content": {
                "application/json": {"schema": inline_refs(InferenceRequest.model_json_schema())},
                OCTET_STREAM: {
                    "schema": {"type": "string", "format": "binary"},
                    "description": f"the JSON ({INFERENCE_HEADER} bytes) then binary tensor data",
                },
            },
        }
    }


def inline_refs(schema: dict[str, Any]) -> dict[str, Any]:
    """``schema`` with its ``$defs`` written in place of their ``$ref``s (openapi.yaml has no
    ``$defs`` of its own to point into)."""
    definitions = schema.pop("$defs", {})

    def resolve(node: Any) -> Any:
        if isinstance(node, dict):
            ref = node.get("$ref")
            if isinstance(ref, str) and ref.startswith("#/$defs/"):
                return resolve(definitions[ref.removeprefix("#/$defs/")])
            return {key: resolve(value) for key, value in node.items()}
        if isinstance(node, list):
            return [resolve(value) for value in node]
        return node

    resolved: dict[str, Any] = resolve(schema)
    return resolved


# -- the model a path names ------------------------------------------------------------------

NamePath = Annotated[str, Path(description="the model's name (GET /v2/models/{name})")]
VersionPath = Annotated[str, Path(description="the model's version (its metadata's versions)")]


async def named_model(state: StateDep, name: NamePath) -> AsyncIterator[ServingModel]:
    """The model called ``name`` (``GET /models``), held for the request; else 404
    ``unknown_model`` listing the names (``deps.model_named``)."""
    async with model_named(state, name) as model:
        yield model


async def check_version(
    model: Annotated[ServingModel, Depends(named_model)], version: VersionPath
) -> None:
    """404 ``unknown_model`` unless ``version`` is the served model's."""
    if version != model.meta.version:
        raise UnknownModel(
            f"model {model.meta.name!r} has no version {version!r}; it has {model.meta.version!r}"
        )


NamedModelDep = Annotated[ServingModel, Depends(named_model)]


async def request_body(request: Request) -> bytes:
    """The whole body, read before the explanation turn's ``ClientDep`` starts watching the
    connection for a hang-up (it reads what ``receive()`` gives from then on): first among a
    route's dependencies."""
    return await request.body()


BodyDep = Annotated[bytes, Depends(request_body)]

router = APIRouter(tags=["v2"])
Endpoint = TypeVar("Endpoint", bound=Callable[..., Any])


def _model_route(method: str, suffix: str, **options: Any) -> Callable[[Endpoint], Endpoint]:
    """Register the endpoint at ``/v2/models/{name}<suffix>`` and, checking the version, at
    ``/v2/models/{name}/versions/{version}<suffix>`` (operation id: its name, ``_version``)."""

    def register(endpoint: Endpoint) -> Endpoint:
        dependencies = options.pop("dependencies", [])
        name = endpoint.__name__
        router.add_api_route(
            f"/v2/models/{{name}}{suffix}",
            endpoint,
            methods=[method],
            name=name,
            dependencies=dependencies,
            **options,
        )
        router.add_api_route(
            f"/v2/models/{{name}}/versions/{{version}}{suffix}",
            endpoint,
            methods=[method],
            name=f"{name}_version",
            dependencies=[*dependencies, Depends(check_version)],
            **options,
        )
        return endpoint

    return register


@router.get("/v2", summary="Server metadata (Open Inference Protocol)", dependencies=[ON_GATEWAY])
async def v2_server_metadata() -> ServerMetadata:
    """The server's name, version and protocol extensions."""
    return ServerMetadata(name=SERVER_NAME, version=__version__, extensions=EXTENSIONS)


@router.get(
    "/v2/health/live", summary="Liveness (Open Inference Protocol)", dependencies=[ON_GATEWAY]
)
async def v2_server_live() -> ServerLive:
    """200 while the process serves HTTP, as ``/healthz``."""
    return ServerLive(live=True)


@router.get(
    "/v2/health/ready",
    summary="Readiness (Open Inference Protocol)",
    responses=_errors(503),
    dependencies=[ON_GATEWAY],
)
async def v2_server_ready(model: DefaultModelDep) -> ServerReady:
    """200 once the model is loaded, checked and warmed up, as ``/readyz``; else 503."""
    return ServerReady(ready=True)


@_model_route(
    "GET",
    "",
    summary="Model metadata (Open Inference Protocol)",
    responses=_errors(401, 404, 503),
    dependencies=[Depends(api_key_guard), ON_GATEWAY],
)
async def v2_model_metadata(model: NamedModelDep) -> ModelMetadata:
    """The inputs a request may send (exactly one of them), the outputs of ``infer``, and the
    classes in the order of ``probabilities``' last axis (``parameters.classes``)."""
    meta = model.meta
    classes = [info.id for info in meta.classes]
    tensor_shape = [-1, 3, meta.input.height, meta.input.width]
    outputs = [
        MetadataTensor(
            name="probabilities",
            datatype="FP32",
            shape=[-1, len(classes)],
            parameters={"classes": ",".join(classes)},
        ),
        MetadataTensor(name="label", datatype="BYTES", shape=[-1]),
        MetadataTensor(name="name", datatype="BYTES", shape=[-1]),
    ]
    if model.open_set is not None:
        outputs += [
            MetadataTensor(name="open_set_score", datatype="FP32", shape=[-1]),
            MetadataTensor(name="open_set_known", datatype="BOOL", shape=[-1]),
        ]
    return ModelMetadata(
        name=meta.name,
        versions=[meta.version],
        platform=PLATFORM,
        inputs=[
            MetadataTensor(
                name=IMAGE_INPUT,
                datatype="BYTES",
                shape=[-1],
                parameters={"content": "JPEG, PNG, WebP or BMP file bytes"},
            ),
            MetadataTensor(
                name=TENSOR_INPUT,
                datatype="FP32",
                shape=tensor_shape,
                parameters={"content": "the model input, preprocessed as GET /model's input"},
            ),
        ],
        outputs=outputs,
        parameters={
            "classes": ",".join(classes),
            "class_names": ",".join(info.name for info in meta.classes),
            "explain_methods": ",".join(EXPLAINERS),
        },
    )


@_model_route(
    "GET",
    "/ready",
    summary="Model readiness (Open Inference Protocol)",
    responses=_errors(404, 503),
    dependencies=[ON_GATEWAY],
)
async def v2_model_ready(model: NamedModelDep) -> ModelReady:
    """200 when the named model is ready (404 for another name, 503 while loading)."""
    return ModelReady(name=model.meta.name, ready=True)


# -- inference -------------------------------------------------------------------------------


@_model_route(
    "POST",
    "/infer",
    summary="Classify faces (Open Inference Protocol)",
    response_model=InferenceResponse,
    responses=_errors(400, 401, 404, 413, 415, 422, 503),
    openapi_extra=_body_schema(),
    dependencies=[
        Depends(request_body),
        Depends(api_key_guard),
        Depends(in_flight_slot),
        ON_PREDICT,
    ],
)
async def v2_infer(
    request: Request, raw: BodyDep, state: StateDep, model: NamedModelDep
) -> Response:
    """``/predict`` for every image of the input (``BYTES``, one file's bytes an element) or
    every row of the model input (``FP32`` ``[N, 3, H, W]``): ``probabilities`` ``[N, C]`` in
    the classes' order, ``label`` and ``name`` ``[N]``, and where the bundle has an open-set
    rule ``open_set_score`` ``[N]`` and ``open_set_known`` ``[N]`` (``score >= threshold``)."""
    received_at = time.perf_counter()
    body, tensor = await read_input(request, raw)
    choice = face_params(body.parameters, allowed=set())
    inputs, _ = await model_inputs(state, model, tensor, choice, received_at, one=False)
    results = await asyncio.gather(*(model.classify(row) for row in inputs))
    classes = model.meta.classes
    count = len(results)
    tops = [classes[result.top] for result in results]
    outputs = [
        Output(
            "probabilities",
            "FP32",
            (count, len(classes)),
            np.stack([result.probabilities for result in results]),
        ),
        Output("label", "BYTES", (count,), [top.id.encode() for top in tops]),
        Output("name", "BYTES", (count,), [top.name.encode() for top in tops]),
    ]
    if model.open_set is not None:
        rule = model.open_set
        verdicts = [_verdict(rule, result) for result in results]
        outputs += [
            Output(
                "open_set_score",
                "FP32",
                (count,),
                np.array([v.score for v in verdicts]),
                {"threshold": rule.threshold, "definition": rule.score},
            ),
            Output("open_set_known", "BOOL", (count,), np.array([v.known for v in verdicts])),
        ]
    return answer(body, model.meta.name, model.meta.version, outputs)


def _verdict(rule: OpenSetRule, result: Classification) -> OpenSetVerdict:
    """/predict's verdict on ``result`` (without its evidence, which no output carries)."""
    if result.open_set_score is None:  # a model with a rule scores every face
        raise RuntimeError("the model's open-set rule gave no score")
    return OpenSetVerdict.judge(rule, result.open_set_score, result.open_set_parts or {})


# -- the explanation extension ---------------------------------------------------------------

EXPLAIN_OWN = ("target", "contrast", "quality")
# The body first (``request_body``), then the explanation routes' checks and turns.
EXPLAIN_DEPENDENCIES = [
    Depends(request_body),
    Depends(api_key_guard),
    Depends(in_flight_slot),
    Depends(explanation_slot),
    ON_EXPLAIN,
]
# What both explanation paths (the extension's and KServe's) declare besides their summaries.
EXPLAIN_ROUTE: dict[str, Any] = {
    "response_model": InferenceResponse,
    "responses": _errors(400, 401, 404, 413, 415, 422, 503),
    "openapi_extra": _body_schema(),
    "dependencies": EXPLAIN_DEPENDENCIES,
}


class ExplainParams(BaseModel):
    """The request parameters every method takes, as ``POST /explain/{method}``'s query."""

    model_config = ConfigDict(strict=True)

    target: str | None = None
    contrast: str | None = None
    quality: bool | None = None


@_model_route(
    "POST",
    "/explain",
    summary="Explain a face (this service's explanation extension)",
    description="`POST /explain/{method}` over the Open Inference Protocol: request parameters "
    f"`{EXPLAIN_METHOD}` (one of {', '.join(EXPLAINERS)}) and its parameters (GET /explain), "
    "`target`, `contrast`, `quality`, `detect`, `face`; one image (BYTES) or model input "
    "(FP32 [1, 3, H, W]). Outputs: `heatmap` (FP32, the JSON answer's grid), `probabilities`, "
    "`label`, `target` and, where the map was graded, `quality` (BYTES: its JSON). docs/v2.md.",
    **EXPLAIN_ROUTE,
)
async def v2_explain(
    request: Request,
    raw: BodyDep,
    state: StateDep,
    model: NamedModelDep,
    cache: ExplanationCacheDep,
    cancellation: ClientDep,
) -> Response:
    """``POST /explain/{method}``'s checks in its order (method, its parameters and cost, the
    question), then the face, the use case and its JSON answer, given as tensors."""
    received_at = time.perf_counter()
    body, tensor = await read_input(request, raw)
    parameters = dict(body.parameters or {})
    name = parameters.pop(EXPLAIN_METHOD, None)
    if not isinstance(name, str):
        invalid(("body", "parameters", EXPLAIN_METHOD), f"required: one of {', '.join(EXPLAINERS)}")
    explainer = EXPLAINERS.get(name)
    if explainer is None:
        raise UnknownMethod(f"no explanation method {name!r}; valid: {', '.join(EXPLAINERS)}")
    own = set(offered(explainer))
    choice = face_params(parameters, allowed=own | set(EXPLAIN_OWN))
    common = _explain_params(parameters)
    call = _method_call(explainer, {k: v for k, v in parameters.items() if k in own}, state, model)
    question = question_of(model, common.target, common.contrast, explainer)
    inputs, facts = await model_inputs(state, model, tensor, choice, received_at, one=True)
    explanation = await run_explanation(
        state, model, inputs[0], call, question, common.quality, cancellation, cache
    )
    result = await run_in_threadpool(
        explanations.json_answer, model, facts[0], inputs[0], explanation
    )
    grid = result.heatmap
    by_id = {item.id: item.probability for item in result.probabilities}
    classes = model.meta.classes
    outputs = [
        Output(
            "heatmap",
            "FP32",
            (grid.height, grid.width),
            np.array(grid.values, dtype=np.float32),
            {
                "signed": grid.signed,
                "units": grid.units,
                "scale": grid.scale,
                "negligible": grid.negligible,
                "space": "model_input" if tensor.datatype == "FP32" else "upload",
            },
        ),
        Output(
            "probabilities",
            "FP32",
            (1, len(classes)),
            np.array([[by_id[info.id] for info in classes]]),
        ),
        Output("label", "BYTES", (1,), [result.label.encode()]),
        Output("target", "BYTES", (1,), [result.target.id.encode()]),
    ]
    if result.quality is not None:
        outputs.append(
            Output("quality", "BYTES", (1,), [result.quality.model_dump_json().encode()])
        )
    meta: dict[str, Any] = {"method": result.method, "cached": result.cached}
    if result.quality is not None:
        meta["quality_verdict"] = result.quality.verdict
    return answer(body, model.meta.name, model.meta.version, outputs, meta)


def _explain_params(parameters: dict[str, Any]) -> ExplainParams:
    try:
        return ExplainParams.model_validate(
            {k: parameters[k] for k in EXPLAIN_OWN if k in parameters}
        )
    except ValidationError as exc:
        raise RequestValidationError(
            [{**error, "loc": ("body", "parameters", *error["loc"])} for error in exc.errors()]
        ) from exc


def _method_call(
    explainer: type[Explainer], values: dict[str, Any], state: ServiceState, model: ServingModel
) -> MethodCall:
    """The method's parameters checked as ``POST /explain/{method}`` checks its query."""
    try:
        return check_params(explainer, values, call_bounds(state, model))
    except RequestValidationError as exc:
        raise RequestValidationError(
            [{**error, "loc": ("body", "parameters", *error["loc"][1:])} for error in exc.errors()]
        ) from exc


router.add_api_route(
    "/v1/models/{name}:explain",
    v2_explain,
    methods=["POST"],
    name="kserve_explain",
    summary="Explain a face (the path KServe's InferenceRESTClient.explain posts to)",
    description="The same as `POST /v2/models/{name}/explain`: KServe's "
    "`InferenceRESTClient.explain` posts here (configured for its v1 protocol; for v2 it "
    "refuses to explain).",
    **EXPLAIN_ROUTE,
)
