"""GET /model, /healthz, /readyz: what is served, and whether it can serve."""

from __future__ import annotations

from fastapi import APIRouter, Depends

from service.api.deps import DefaultModelDep, ModelDep, SettingsDep, api_key_guard
from service.api.placement import ON_GATEWAY
from service.inference.precision_probe import INT8_MARGIN, ProbeTimes
from service.schemas.common import ModelRef, error_responses
from service.schemas.meta import (
    CpuInfoOut,
    HealthResponse,
    ModelResponse,
    PrecisionProbeInfo,
    ReadinessResponse,
    RuntimeInfo,
)
from service.schemas.predict import OpenSetRuleInfo

router = APIRouter(tags=["service"], dependencies=[ON_GATEWAY])


@router.get(
    "/model",
    summary="The model bundle's metadata",
    dependencies=[Depends(api_key_guard)],
    responses=error_responses(401, 404, 503),
)
async def model_info(model: ModelDep, settings: SettingsDep) -> ModelResponse:
    """meta.json of the bundle (``model=``; default: the default one: classes, input spec,
    metrics, file hashes) and how it runs."""
    report = model.report
    choice = report.precision_choice
    runtime = RuntimeInfo(
        provider=model.engine.provider,
        max_batch_size=settings.max_batch_size,
        batch_timeout_ms=settings.batch_timeout_ms,
        threads=settings.threads,
        files_verified=report.files_verified,
        precision=report.precision,
        onnx_file=report.onnx_file,
        parity_max_abs_diff=report.parity_max_abs_diff,
        parity_tolerance=report.parity_tolerance,
        precision_setting=choice.setting,
        precision_reason=choice.reason,
        precision_probe=probe_info(choice.times),
        cpu=CpuInfoOut(model=choice.cpu.model, flags=list(choice.cpu.flags)),
        twin_precision=report.twin_precision.dtype,
        twin_precision_reason=report.twin_precision.reason,
        twin_bf16_spearman=report.twin_precision.spearman,
        one_pass=model.one_pass.how if model.one_pass else None,
        load_ms=report.load_ms,
        warmup_ms=report.warmup_ms,
        loaded_at=report.loaded_at,
        open_set=OpenSetRuleInfo.of(model.open_set) if model.open_set else None,
    )
    return ModelResponse(meta=model.meta, runtime=runtime)


def probe_info(times: ProbeTimes | None) -> PrecisionProbeInfo | None:
    if times is None:
        return None
    return PrecisionProbeInfo(
        fp32_ms=times.fp32_s * 1000,
        int8_ms=times.int8_s * 1000,
        ratio=times.ratio,
        margin=INT8_MARGIN,
        rounds=times.rounds,
        batch=times.batch,
    )


@router.get("/healthz", summary="Liveness")
async def healthz() -> HealthResponse:
    """200 while the process serves HTTP, whether or not the model is ready."""
    return HealthResponse()


@router.get("/readyz", summary="Readiness", responses=error_responses(503))
async def readyz(model: DefaultModelDep) -> ReadinessResponse:
    """200 once the bundle is loaded, checked and warmed up; else 503 ``not_ready`` saying why."""
    return ReadinessResponse(
        model=ModelRef.of(model),
        provider=model.engine.provider,
    )
