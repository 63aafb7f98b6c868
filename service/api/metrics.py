"""GET /metrics: Prometheus text exposition of this app's registry."""

from __future__ import annotations

from fastapi import APIRouter, Response

from service.api.deps import StateDep
from service.api.placement import ON_GATEWAY

router = APIRouter(tags=["service"], dependencies=[ON_GATEWAY])


@router.get(
    "/metrics",
    summary="Prometheus metrics",
    response_class=Response,
    responses={200: {"content": {"text/plain": {}}, "description": "Prometheus text format"}},
)
async def metrics(state: StateDep) -> Response:
    """Requests and latency per endpoint and status, batch sizes, readiness and model info."""
    registry = state.metrics
    return Response(registry.render(), media_type=registry.content_type)
