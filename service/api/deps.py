"""Dependencies every router uses, as ``Annotated`` aliases.

- ``SettingsDep``: this app's ``Settings``.
- ``StateDep``: this app's ``ServiceState`` (metrics, model, readiness).
- ``ModelDep``: the ``ServingModel`` the request's ``model`` query parameter names (default:
  the default bundle), held for the whole request (``ModelRegistry.lease``: another model is
  loaded on its first use, and never unloaded under a request); 503 ``not_ready`` until the
  default is loaded, 404 ``unknown_model`` listing the names, 503 ``model_unavailable`` for a
  bundle that failed its checks. ``DefaultModelDep``: the default model, no ``model``
  parameter (readiness); ``ModelIfReadyDep``: ``ModelDep``'s model, None before the default
  is loaded.
- ``ImageDep``: the uploaded multipart ``file`` through image intake (``service.intake``),
  within the app's budget of decoded pixels (``intake/pixel_budget.py``).
- ``FaceDep``: the face to classify or explain in that image (``service.faces``; query
  parameters ``detect`` and ``face``).
- ``ModelInputDep``: that face preprocessed into the model's input (``ServingModel.
  model_input``): what ``/predict`` classifies and the explanation and insight routers explain.
- ``ExplanationCacheDep``: the app's explanation result cache as this request sees it: one
  scope per API key when keys are configured (no key learns what another explained), shared
  without keys.
- ``api_key_guard`` and ``in_flight_slot``: put on image routers with ``dependencies=[...]``;
  ``explanation_slot`` too on routers whose work is expensive (explanations): synchronous
  explanations take their turn before any queued job (``service.common.admission``).
- ``OwnerDep``: who owns the jobs the request makes or reads, and whose job limit they count
  against: a digest of its API key when keys are configured, else a digest of the client's
  address as uvicorn reports it (``X-Forwarded-For`` from a proxy on loopback; behind a proxy
  on another host every client shares the proxy's address, and so one limit).
- ``ClientDep``: the request's ``Cancellation``, cancelled when the client hangs up; expensive
  work checks it between batches, and a request it stopped is answered (to nobody) and
  counted in ``/metrics`` as 499 ``client_closed_request``.

An explanation router declares ``model: ModelDep, image: ImageDep`` and gets the same checks,
errors and limits as ``/predict``.

The dependencies that only read what is at hand are ``async def``: FastAPI runs a plain ``def``
dependency on a worker thread, and that hop cost more than their work (about 0.2 ms each).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Annotated

from fastapi import Depends, File, Query, Request, Security, UploadFile
from fastapi.exceptions import RequestValidationError
from fastapi.security import APIKeyHeader
from starlette.concurrency import run_in_threadpool
from starlette.types import Receive

from service.common.admission import Priority
from service.common.cancellation import Cancellation, Cancelled
from service.errors import ClientClosedRequest, NotReady, Overloaded, UnknownClass
from service.explanations import ExplanationCache
from service.faces.choice import FaceChoice, choose_face
from service.http.api_key import API_KEY_HEADER, verify_api_key
from service.inference.model import ModelInput, ServingModel
from service.insight.inspector import InspectedModel
from service.intake.images import DecodedImage, ImageLimits, decode_pixels, read_header, read_upload
from service.jobs.store import owner_of
from service.observability import tracing
from service.settings import Settings
from service.state import ServiceState

_api_key_header = APIKeyHeader(
    name=API_KEY_HEADER,
    auto_error=False,
    description="required when the service is configured with an API key",
)


async def get_state(request: Request) -> ServiceState:
    return request.app.state.service


StateDep = Annotated[ServiceState, Depends(get_state)]


async def get_settings(state: StateDep) -> Settings:
    return state.settings


SettingsDep = Annotated[Settings, Depends(get_settings)]


def default_model(state: ServiceState) -> ServingModel:
    """The default model; 503 ``not_ready`` until it is loaded."""
    if state.model is None:
        raise NotReady(state.reason, headers={"Retry-After": "5"})
    return state.model


async def get_default_model(state: StateDep) -> ServingModel:
    return default_model(state)


DefaultModelDep = Annotated[ServingModel, Depends(get_default_model)]
ModelQuery = Annotated[
    str | None,
    Query(
        description="the model to use, by name (GET /models lists them); default: the "
        "service's default model"
    ),
]


async def get_model(state: StateDep, model: ModelQuery = None) -> AsyncIterator[ServingModel]:
    async with model_named(state, model) as served:
        yield served


@asynccontextmanager
async def model_named(state: ServiceState, name: str | None) -> AsyncIterator[ServingModel]:
    """The model called ``name`` (None: the default), held until the ``async with`` ends: what
    ``ModelDep`` gives, and what the Open Inference Protocol's ``/v2/models/{name}`` names."""
    default = default_model(state)
    if state.registry is None or name is None or name == default.meta.name:
        yield default
        return
    lease = await state.registry.lease(name)
    try:
        yield lease.model
    finally:
        lease.release()


ModelDep = Annotated[ServingModel, Depends(get_model)]


async def get_model_if_ready(
    state: StateDep, model: ModelQuery = None
) -> AsyncIterator[ServingModel | None]:
    """``ModelDep``'s model, or None while the default is not loaded (for a route that
    answers then too)."""
    if state.model is None:
        yield None
        return
    async with model_named(state, model) as served:
        yield served


ModelIfReadyDep = Annotated[ServingModel | None, Depends(get_model_if_ready)]


def class_index(model: ServingModel | InspectedModel, class_id: str) -> int:
    """The index of class ``class_id``; 422 ``unknown_class`` listing the valid ids."""
    ids = [info.id for info in model.meta.classes]
    if class_id not in ids:
        raise UnknownClass(f"{class_id!r} is not a class id; valid: {', '.join(ids)}")
    return ids.index(class_id)


async def api_key_guard(
    settings: SettingsDep, key: Annotated[str | None, Security(_api_key_header)]
) -> None:
    """401 unless the request carries the configured API key (no-op when none is configured).

    ``ApiKeyFirstMiddleware`` already refused keyless requests to routes that use this guard,
    before their body was read; the guard marks those routes and declares the scheme in OpenAPI.
    """
    verify_api_key(settings.api_key, key)


async def key_owner(
    request: Request,
    settings: SettingsDep,
    key: Annotated[str | None, Security(_api_key_header)],
) -> str:
    """Who owns the jobs this request makes or reads. With API keys configured: a digest of
    its key (``jobs.store.owner_of``; the key itself was checked by ``api_key_guard``).
    Without: a digest of the client's address, whatever ``X-API-Key`` it sends, so that made-up
    keys do not buy more jobs than ``max_jobs_per_key`` (behind a proxy on another host all
    clients share the proxy's address)."""
    if settings.api_key is not None:
        return owner_of(key)
    address = request.client.host if request.client is not None else "unknown"
    return owner_of(f"address:{address}")


OwnerDep = Annotated[str, Depends(key_owner)]


async def in_flight_slot(state: StateDep) -> AsyncIterator[None]:
    """Hold one of ``max_in_flight`` slots for the request; 503 ``overloaded`` when none is free."""
    if not state.limiter.try_acquire():
        raise Overloaded(
            f"more than {state.limiter.limit} image requests in progress; retry shortly",
            headers={"Retry-After": "1"},
        )
    try:
        yield
    finally:
        state.limiter.release()


async def client_cancellation(request: Request, state: StateDep) -> AsyncIterator[Cancellation]:
    """The request's ``Cancellation``, cancelled as soon as its client hangs up.

    FastAPI has read the body before dependencies run, so from here on the ASGI ``receive()``
    has nothing more to give but ``http.disconnect``, which uvicorn sends when the connection
    is lost (or once the response is complete): a watcher task waits for it instead of
    polling ``Request.is_disconnected()``. Work stopped by the cancellation (``Cancelled``)
    becomes 499 ``client_closed_request``. Every forward pass the work runs is counted in
    ``celebxai_explanation_batches``.
    """
    cancellation = Cancellation(on_batch=state.metrics.explanation_batches.inc)
    watcher = asyncio.create_task(_cancel_on_disconnect(request.receive, cancellation))
    try:
        yield cancellation
    except Cancelled as exc:
        raise ClientClosedRequest(f"work stopped: {exc}") from exc
    finally:
        watcher.cancel()


async def _cancel_on_disconnect(receive: Receive, cancellation: Cancellation) -> None:
    while (await receive())["type"] != "http.disconnect":
        pass  # the rest of a body nobody reads (a GET's empty one)
    cancellation.cancel("the client closed the connection")


ClientDep = Annotated[Cancellation, Depends(client_cancellation)]


async def explanation_slot(state: StateDep, cancellation: ClientDep) -> AsyncIterator[None]:
    """Wait for one of ``max_explanations`` turns, before any queued job, while running jobs
    give theirs away at their next batch; 503 ``overloaded`` (Retry-After) when
    ``explanation_queue`` requests are already waiting. A request whose client hangs up while
    it waits leaves the queue at once (``Cancelled``)."""
    gate = state.explanations
    if not gate.admitted.try_acquire():
        raise Overloaded(
            f"{gate.concurrent} explanation(s) running and {gate.queue} waiting; retry shortly",
            headers={"Retry-After": "2"},
        )
    try:
        await cancellation.guard(gate.take(Priority.INTERACTIVE))
        try:
            cancellation.check()  # the turn came as the client left: run nothing
            yield
        finally:
            gate.release()
    finally:
        gate.admitted.release()


async def image_intake(
    state: StateDep,
    request: Request,
    file: Annotated[UploadFile, File(description="the image: JPEG, PNG, WebP or BMP")],
) -> AsyncIterator[DecodedImage]:
    """The upload decoded, holding its width x height of the app's ``PixelBudget`` from before
    decoding until the request is done (face search, rendering), so that large images are
    decoded and processed a few at a time while small ones go on. More than one ``file`` part
    is 422: which one was meant cannot be told."""
    received_at = time.perf_counter()
    sent = len((await request.form()).getlist("file"))  # the form FastAPI has already read
    if sent > 1:
        raise RequestValidationError(
            [{"loc": ("body", "file"), "msg": f"send one image, not {sent}", "type": "value_error"}]
        )
    data = await read_upload(file, state.settings.max_upload_bytes)
    async with decoded_image(state, data, received_at) as image:
        yield image


@asynccontextmanager
async def decoded_image(
    state: ServiceState, data: bytes, received_at: float
) -> AsyncIterator[DecodedImage]:
    """``data`` (an image file's bytes) checked and decoded, holding its width x height of the
    app's ``PixelBudget`` for the body of the ``async with``: the one intake of the multipart
    routes and the Open Inference Protocol's ``BYTES`` inputs. Traced as ``decode`` (the wait
    for the budget included)."""
    with tracing.span("decode", {"celebxai.image.bytes": len(data)}) as span:
        limits = ImageLimits.from_settings(state.settings)
        header = await run_in_threadpool(read_header, data, limits)
        del data  # the header keeps what Pillow needs
        span.set_attribute("celebxai.image.pixels", header.pixels)
        await state.decodes.acquire(header.pixels)
        try:
            image = await run_in_threadpool(decode_pixels, header, received_at)
        except BaseException:
            state.decodes.release(header.pixels)
            raise
        span.set_attributes(
            {
                "celebxai.image.format": image.format,
                "celebxai.image.width": image.width,
                "celebxai.image.height": image.height,
            }
        )
    try:
        yield image
    finally:
        state.decodes.release(header.pixels)


ImageDep = Annotated[DecodedImage, Depends(image_intake)]


async def face_choice(
    model: ModelDep,
    image: ImageDep,
    detect: Annotated[
        bool,
        Query(description="find the face first; false: the image already is a tight face crop"),
    ] = True,
    face: Annotated[
        int | None,
        Query(
            ge=0,
            description="which detected face to use: an index into `faces` (preferred first); "
            "default 0, the largest and most central",
        ),
    ] = None,
) -> FaceChoice:
    return await choose(model, image, detect=detect, face=face)


async def choose(
    model: ServingModel, image: DecodedImage, *, detect: bool, face: int | None
) -> FaceChoice:
    """The face of ``image`` to classify (``choose_face``, off the event loop), traced as
    ``face search``."""
    with tracing.span("face search", {"celebxai.faces.detect": detect}) as span:
        chosen = await run_in_threadpool(
            choose_face,
            model.faces,
            image.rgb,
            detect=detect,
            index=face,
            framing=model.meta.input.framing,
        )
        span.set_attribute("celebxai.faces.found", len(chosen.faces))
        span.set_attribute("celebxai.faces.source", chosen.source)
        if chosen.index is not None:
            span.set_attribute("celebxai.faces.index", chosen.index)
    return chosen


FaceDep = Annotated[FaceChoice, Depends(face_choice)]


async def model_input(model: ModelDep, face: FaceDep) -> ModelInput:
    return await model.model_input(face)


async def image_input(
    model: ServingModel, image: DecodedImage, *, detect: bool = True, face: int | None = None
) -> ModelInput:
    """What ``ModelInputDep`` gives a multipart route, for an image decoded otherwise."""
    return await model.model_input(await choose(model, image, detect=detect, face=face))


ModelInputDep = Annotated[ModelInput, Depends(model_input)]


async def get_explanation_cache(
    state: StateDep, key: Annotated[str | None, Security(_api_key_header)]
) -> ExplanationCache:
    """The explanation cache in this request's scope: its key's (a digest, as jobs' owners)
    when keys are configured, so that ``"cached": true`` or a fast answer never tells one key
    what another explained; one shared scope without keys."""
    if state.explanation_cache is None:
        raise NotReady(state.reason, headers={"Retry-After": "5"})
    scope = owner_of(key) if state.settings.api_key is not None else ""
    return ExplanationCache(state.explanation_cache, scope, state.grade_cache)


ExplanationCacheDep = Annotated[ExplanationCache, Depends(get_explanation_cache)]
