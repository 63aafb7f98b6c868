"""GET /models: every model served side by side, for ``model=`` on every endpoint."""

from __future__ import annotations

from fastapi import APIRouter, Depends

from service.api.deps import DefaultModelDep, StateDep, api_key_guard
from service.api.placement import ON_GATEWAY
from service.schemas.common import error_responses
from service.schemas.models import ModelMetrics, ModelsResponse, ModelSummary

router = APIRouter(tags=["service"], dependencies=[ON_GATEWAY])


@router.get(
    "/models",
    summary="Every model served, with its metrics",
    dependencies=[Depends(api_key_guard)],
    responses=error_responses(401, 503),
)
async def list_models(state: StateDep, default: DefaultModelDep) -> ModelsResponse:
    """The models `model=` takes, the default first: each one's version, architecture, classes,
    metrics from its meta.json, files' size, whether it is loaded now and the memory loading it
    took. Listing loads nothing."""
    registry = state.registry
    if registry is None:  # made with the default model: not None once that is loaded
        raise RuntimeError("no model registry beside a loaded default model")
    summaries = []
    for name, bundle in registry.bundles.items():
        loaded = registry.loaded(name)
        meta = loaded.model.meta if loaded is not None else bundle.meta
        summaries.append(
            ModelSummary(
                name=name,
                version=meta.version,
                architecture=meta.architecture,
                default=name == default.meta.name,
                loaded=loaded is not None,
                classes=[info.name for info in meta.classes],
                metrics=ModelMetrics.of(meta),
                size_bytes=bundle.size_bytes,
                rss_bytes=loaded.rss_bytes if loaded is not None else None,
                unavailable=registry.failure(name),
            )
        )
    return ModelsResponse(
        default=default.meta.name, max_loaded=registry.max_loaded, models=summaries
    )
