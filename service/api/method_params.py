"""An explanation method's own query parameters: which are offered, how they are checked.

``method_call`` reads them for ``POST /explain/{method}`` from the query string;
``alias_query`` declares them as a query model for the older ``/saliency``, ``/occlusion`` and
``/lime`` (so openapi.yaml lists them there). Either way ``check_params`` checks them once, with
the method's ``Params`` and against the served model and the cost limit (``MethodCall.of`` with
``call_bounds``: a Grad-CAM ``layer`` the model lacks is 422 ``unknown_layer``, more passes
than ``max_passes_per_request`` 422 ``too_costly``), so bounds and rules across parameters give
the same 422s everywhere, a job's (``POST /jobs/{method}`` reads ``method_call`` too) before its
202; nothing below checks them again.
"""

from __future__ import annotations

import copy
from collections.abc import Iterable, Mapping
from typing import Annotated, Any, NoReturn

from fastapi import Path, Request
from fastapi.exceptions import RequestValidationError
from pydantic import BaseModel, ValidationError, create_model

from service.api.deps import ModelDep, StateDep
from service.errors import UnknownMethod
from service.explain import EXPLAINERS, Explainer
from service.explain.base import CallBounds, MethodCall
from service.inference.model import ServingModel
from service.state import ServiceState

# Not exposed over HTTP: it trades memory for speed and never changes the map.
SERVER_SIDE_PARAMS = frozenset({"batch_size"})


def offered(explainer: type[Explainer]) -> list[str]:
    """The method's parameters as HTTP offers them."""
    return [name for name in explainer.Params.model_fields if name not in SERVER_SIDE_PARAMS]


def shown_params(call: MethodCall) -> dict[str, Any]:
    """The call's parameters as HTTP offers them (a job's ``parameters``)."""
    own = offered(call.explainer)
    return {name: value for name, value in call.params.model_dump().items() if name in own}


def call_bounds(state: ServiceState, model: ServingModel | None) -> CallBounds | None:
    """What calls are checked against: ``model``'s layers and input side, the app's
    ``max_passes_per_request`` and whether the model has a one-pass explainer; None without a
    model (before the default is loaded: the route answers 503 ``not_ready`` then, having
    nothing to run)."""
    if model is None:
        return None
    meta = model.meta
    layers = [layer.name for layer in meta.layers]
    if meta.gradcam_layer and meta.gradcam_layer not in layers:
        layers.append(meta.gradcam_layer)
    side = (meta.input.height, meta.input.width)
    return CallBounds(
        tuple(layers), side, state.settings.max_passes_per_request, model.one_pass is not None
    )


def check_params(
    explainer: type[Explainer], values: Mapping[str, Any], bounds: CallBounds | None
) -> MethodCall:
    """``values`` (query strings or typed) checked by the method's ``Params``, rules across
    parameters included (occlusion's stride <= window); 422 ``validation_error`` saying why.
    Then against ``bounds`` (``call_bounds``): 422 ``unknown_layer``, 422 ``too_costly``.
    Only offered parameters are taken from ``values``; the others keep their defaults."""
    own = offered(explainer)
    try:
        return MethodCall.of(explainer, {k: v for k, v in values.items() if k in own}, bounds)
    except ValidationError as exc:
        raise RequestValidationError(
            [{**error, "loc": ("query", *error["loc"])} for error in exc.errors()]
        ) from exc


async def method_call(
    request: Request,
    state: StateDep,
    model: ModelDep,
    method: Annotated[
        str,
        Path(
            description="an explanation method, as GET /explain lists them",
            json_schema_extra={"enum": list(EXPLAINERS)},
        ),
    ],
) -> MethodCall:
    """The path's method with its parameters from the query string; 404 ``unknown_method``
    before any work is queued. Other methods' parameters are refused (422), other names are
    left to the dependencies that read them (``detect``, ``face``)."""
    explainer = EXPLAINERS.get(method)
    if explainer is None:
        raise UnknownMethod(f"no explanation method {method!r}; valid: {', '.join(EXPLAINERS)}")
    refuse_others(request.query_params.keys(), method)
    own = offered(explainer)
    query = request.query_params
    values = {name: query[name] for name in own if name in query}
    return check_params(explainer, values, call_bounds(state, model))


def alias_query(name: str, methods: Iterable[str], **extra: Any) -> type[BaseModel]:
    """The query model of an alias: ``extra`` fields, and every offered parameter of the
    ``methods`` with its default, bounds and description (for openapi.yaml)."""
    fields: dict[str, Any] = {**extra}
    methods = list(methods)
    for method in methods:
        explainer = EXPLAINERS[method]
        for field_name in offered(explainer):
            if field_name in fields:
                continue
            info = explainer.Params.model_fields[field_name]
            if len(methods) > 1:  # say which method a parameter belongs to
                info = copy.copy(info)
                info.description = f"{info.description} ({method} only)"
            fields[field_name] = (info.annotation, info)
    return create_model(name, **fields)


def refuse_others(names: Iterable[str], method: str) -> None:
    """422 when ``names`` (a request's query parameters) hold another method's parameter;
    a name that no method takes is left to the dependencies that read it."""
    own = offered(EXPLAINERS[method])
    others = {name for other in EXPLAINERS.values() for name in offered(other)}
    refuse_foreign(set(names) & others - set(own), method, own)


def refuse_foreign(foreign: Iterable[str], method: str, own: Iterable[str]) -> None:
    if names := sorted(foreign):
        _reject(
            ("query", names[0]),
            f"{', '.join(names)} does not apply to method={method}; its parameters: "
            f"{', '.join(sorted(own)) or 'none'}",
        )


def _reject(loc: tuple[str, ...], message: str) -> NoReturn:
    raise RequestValidationError([{"loc": loc, "msg": message, "type": "value_error"}])
