"""``create_app`` builds the FastAPI app; ``lifespan`` loads, checks and warms up the model.

Loading happens once per app, in the lifespan, on a worker thread. If it fails the app still
serves: ``/healthz`` answers, and ``/readyz`` and every model endpoint answer 503 ``not_ready``
with the reason. Explanation endpoints plug in as one more router in ``ROUTERS``.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import yaml
from fastapi import APIRouter, FastAPI

from service import __version__
from service.api import (
    docs,
    evaluate,
    evidence,
    explain,
    insight,
    jobs,
    meta,
    metrics,
    models,
    page,
    predict,
    v2,
    v2_tensors,
)
from service.common.lru import LruCache
from service.explanations import QUALITY_HEADER, SAMPLES_PLANNED_HEADER, SAMPLES_USED_HEADER
from service.http.api_key import API_KEY_HEADER, ApiKeyFirstMiddleware
from service.http.body_limit import BodySizeLimitMiddleware
from service.http.connection_limits import refusal_counter
from service.http.cors import JsonCORSMiddleware
from service.http.errors import install_error_handlers
from service.http.head_requests import HeadAsGetMiddleware
from service.http.security_headers import SecurityHeadersMiddleware
from service.inference.model import load_model
from service.inference.registry import Bundle, ModelRegistry, discover, measured, public_reason
from service.insight.inspector import Inspector, synthesis_cache
from service.observability import tracing
from service.observability.cache_metrics import CacheCollector
from service.observability.metrics import MetricsMiddleware
from service.observability.trace_middleware import TracingMiddleware
from service.render.upload import NEGLIGIBLE_HEADER
from service.settings import ENV_PREFIX, Settings, get_settings
from service.state import ServiceState

log = logging.getLogger(__name__)

ROUTERS: tuple[APIRouter, ...] = (
    predict.router,
    evidence.router,
    evaluate.router,  # before explain's: /explain/{method} would take its path
    explain.router,
    jobs.router,
    insight.router,
    meta.router,
    models.router,
    metrics.router,
    page.router,
    docs.router,
    v2.router,
)
# What a page of an allowed origin may do: every method a route takes (HEAD and GET need no
# preflight; DELETE cancels a job), and read every header an answer says something in.
CORS_METHODS = ["GET", "POST", "DELETE"]
CORS_EXPOSED_HEADERS = [
    "Location",  # a new job's URL (202)
    "Retry-After",  # when to retry a 503 or a 429
    NEGLIGIBLE_HEADER,  # a PNG heatmap with nothing to show
    QUALITY_HEADER,  # a PNG heatmap's verdict
    SAMPLES_USED_HEADER,  # a sampling method's PNG heatmap: samples used
    SAMPLES_PLANNED_HEADER,  # and planned
    insight.CHANNELS_HEADER,  # which channel each activation tile shows
    v2_tensors.INFERENCE_HEADER,  # where a v2 answer's JSON ends and its binary data begins
]
# Room for the multipart framing around the file within the body size limit.
MULTIPART_OVERHEAD_BYTES = 64 * 1024
DESCRIPTION = (
    "Explainable face classification: which of the model's people is in a photo, and why. "
    "Images are sent as multipart field `file` (JPEG, PNG, WebP or BMP). Every error is "
    '`{"error": {"code": ..., "message": ...}}` with a stable code.'
)


@asynccontextmanager
async def lifespan(app: FastAPI) -> AsyncIterator[None]:
    state: ServiceState = app.state.service
    settings = state.settings
    log_authentication(settings)
    # Keys hold the model's sha256, so a cache would never mix bundles; it is the app's anyway.
    state.explanation_cache = LruCache(explain.CACHE_ENTRIES)
    state.grade_cache = LruCache(explain.GRADE_CACHE_ENTRIES)
    syntheses = synthesis_cache()
    caches = CacheCollector(
        {
            "explanations": state.explanation_cache,
            "grades": state.grade_cache,
            "syntheses": syntheses,
        }
    )
    state.metrics.registry.register(caches)
    try:
        model, rss = await asyncio.to_thread(
            measured, lambda: load_model(settings, state.metrics.observe_batch)
        )
    except Exception as exc:  # any failure keeps the app up and not ready, saying why
        state.phase = "failed"
        state.reason = f"the model bundle cannot be served: {public_reason(exc)}"
        # The log has what clients are not shown: the bundle's path and the whole error.
        log.error("model bundle %s cannot be served: %s", settings.model, exc, exc_info=exc)
    else:
        try:  # refuses to start on two bundles of one name (DuplicateModel)
            bundles = discover(settings.models_dir, Bundle(settings.model, model.meta))
        except Exception:
            await model.close()
            raise
        model.start(admitted=lambda: state.limiter.active)
        state.inspector = Inspector(model, syntheses)
        state.registry = ModelRegistry(
            bundles,
            model,
            settings.max_loaded_models,
            default_rss=rss,
            load=lambda path: load_model(
                settings.model_copy(update={"model": path}), state.metrics.observe_batch
            ),
            start=lambda other: other.start(admitted=lambda: state.limiter.active),
            metrics=state.metrics,
        )
        state.model, state.phase, state.reason = model, "ready", "ready"
        state.metrics.ready.set(1)
        state.metrics.model_info.info(
            {
                "name": model.meta.name,
                "version": model.meta.version,
                "provider": model.engine.provider,
                "precision": model.report.precision,
                "onnx_sha256": model.meta.files[model.report.onnx_file].sha256,
            }
        )
    try:
        yield
    finally:
        state.metrics.ready.set(0)
        await state.job_runner.stop()
        await state.job_events.close_all()
        state.metrics.registry.unregister(caches)
        state.inspector = None
        if state.registry is not None:
            await state.registry.close()
            state.registry = None
        if state.model is not None:
            await state.model.close()
            state.model = None
        state.phase, state.reason = "stopped", "the service is shutting down"
        # uvicorn ends the process by re-raising SIGTERM after this: export what is pending now
        await asyncio.to_thread(tracing.flush)


def log_authentication(settings: Settings) -> None:
    if settings.api_key is None:
        log.warning(
            "API key authentication is OFF: every endpoint is open (set %sAPI_KEY to require "
            "a key)",
            ENV_PREFIX,
        )
    else:
        log.info(
            "API key authentication is on: image, explanation, insight and /model endpoints "
            "need the %s header",
            API_KEY_HEADER,
        )


def create_app(settings: Settings | None = None) -> FastAPI:
    """The service app for ``settings`` (default: from the environment, see ``Settings``)."""
    settings = settings or get_settings()
    app = FastAPI(
        title="celebxai",
        version=__version__,
        description=DESCRIPTION,
        lifespan=lifespan,
        docs_url=None,  # served offline by api.docs
        redoc_url=None,
        generate_unique_id_function=lambda route: route.name,  # operationId = function name
    )
    app.state.service = ServiceState(settings)
    install_error_handlers(app)
    for router in ROUTERS:
        app.include_router(router)
    app.state.connections_closed = refusal_counter(app.state.service.metrics.registry)
    # Added innermost first. From the outside in: the request's server span (tracing), security
    # headers on every response, CORS, HEAD as GET, metrics, the API key (before any body is
    # read), the body size limit.
    app.add_middleware(
        BodySizeLimitMiddleware,
        max_body_bytes=settings.max_upload_bytes + MULTIPART_OVERHEAD_BYTES,
    )
    app.add_middleware(ApiKeyFirstMiddleware, api_key=settings.api_key)
    app.add_middleware(MetricsMiddleware, metrics=app.state.service.metrics)
    app.add_middleware(HeadAsGetMiddleware)
    if settings.cors_origins:
        app.add_middleware(
            JsonCORSMiddleware,
            allow_origins=settings.cors_origins,
            allow_methods=CORS_METHODS,
            allow_headers=[API_KEY_HEADER, "Content-Type"],
            expose_headers=CORS_EXPOSED_HEADERS,
        )
    app.add_middleware(SecurityHeadersMiddleware)
    app.add_middleware(TracingMiddleware)
    return app


def openapi_yaml() -> str:
    """The app's OpenAPI document as YAML: what ``openapi.yaml`` at the repo root must hold."""
    document = create_app(Settings()).openapi()
    return yaml.safe_dump(document, sort_keys=False, allow_unicode=True, width=100)
