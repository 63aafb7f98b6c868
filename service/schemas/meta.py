"""``GET /model``, ``/healthz`` and ``/readyz``: the bundle, the runtime, readiness."""

from __future__ import annotations

from datetime import datetime
from typing import Literal

from pydantic import BaseModel, Field

from service.bundle.format import BundleMeta
from service.schemas.common import ModelRef
from service.schemas.predict import OpenSetRuleInfo


class RuntimeInfo(BaseModel):
    provider: str = Field(description="ONNX Runtime execution provider in use")
    max_batch_size: int
    batch_timeout_ms: float
    threads: int = Field(description="intra-op threads (0 = one per core)")
    files_verified: int = Field(description="bundle files whose sha256 matched meta.json")
    precision: Literal["fp32", "int8"] = Field(
        description="the ONNX graph serving /predict and the perturbation methods (occlusion, "
        "LIME, RISE), from the precision setting; gradient methods always run the FP32 twin"
    )
    onnx_file: str = Field(description="the bundle's ONNX file that serves")
    parity_max_abs_diff: float = Field(description="ONNX vs twin on the probe input")
    parity_tolerance: float = Field(
        description="largest allowed |logit difference| at load time: the bundle's FP32 "
        "tolerance, or for INT8 its precision.int8.parity.tolerance (and labels must agree)"
    )
    load_ms: float
    warmup_ms: float
    loaded_at: datetime
    open_set: OpenSetRuleInfo | None = Field(
        description="the 'none of the classes' decision in force; null without calibration"
    )


class ModelResponse(BaseModel):
    """The bundle's meta.json as loaded, and how it runs."""

    meta: BundleMeta
    runtime: RuntimeInfo


class HealthResponse(BaseModel):
    status: Literal["ok"] = "ok"


class ReadinessResponse(BaseModel):
    status: Literal["ready"] = "ready"
    model: ModelRef
    provider: str
