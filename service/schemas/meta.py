"""``GET /model``, ``/healthz`` and ``/readyz``: the bundle, the runtime, readiness."""

from __future__ import annotations

from datetime import datetime
from typing import Literal

from pydantic import BaseModel, Field

from service.bundle.format import BundleMeta
from service.schemas.common import ModelRef
from service.schemas.predict import OpenSetRuleInfo


class CpuInfoOut(BaseModel):
    model: str = Field(description="the CPU's model name (/proc/cpuinfo); unknown elsewhere")
    flags: list[str] = Field(
        description="its flags that bear on reduced precision (avx2, avx512f, avx512_vnni, "
        "avx_vnni, avx512_bf16, amx_bf16, amx_int8)"
    )


class PrecisionProbeInfo(BaseModel):
    fp32_ms: float = Field(description="fastest thread CPU time of FP32 on the probe batch")
    int8_ms: float = Field(description="the same for INT8")
    ratio: float = Field(description="int8_ms / fp32_ms; INT8 serves at or below the margin")
    margin: float
    rounds: int
    batch: int


class RuntimeInfo(BaseModel):
    provider: str = Field(description="ONNX Runtime execution provider in use")
    max_batch_size: int
    batch_timeout_ms: float
    threads: int = Field(description="intra-op threads (0 = one per core)")
    files_verified: int = Field(description="bundle files whose sha256 matched meta.json")
    precision: Literal["fp32", "int8"] = Field(
        description="the ONNX graph serving /predict and the perturbation methods (occlusion, "
        "LIME, RISE), from the precision setting (auto: measured at load, precision_reason "
        "says why); gradient methods run the twin (twin_precision)"
    )
    onnx_file: str = Field(description="the bundle's ONNX file that serves")
    parity_max_abs_diff: float = Field(description="ONNX vs twin on the probe input")
    parity_tolerance: float = Field(
        description="largest allowed |logit difference| at load time: the bundle's FP32 "
        "tolerance, or for INT8 its precision.int8.parity.tolerance (and labels must agree)"
    )
    precision_setting: Literal["fp32", "int8", "auto"] = Field(
        description="the precision setting the graph was chosen by"
    )
    precision_reason: str = Field(
        description="why that graph serves: the setting, or auto's measured ratio and verdict"
    )
    precision_probe: PrecisionProbeInfo | None = Field(
        description="auto's load-time probe of FP32 against INT8; null where none ran"
    )
    cpu: CpuInfoOut = Field(description="the CPU the process started on")
    twin_precision: Literal["fp32", "bf16"] = Field(
        description="how the twin's sampled gradient passes (SmoothGrad, integrated gradients) "
        "run: bf16 only where the CPU has bfloat16 arithmetic and the load-time parity gate "
        "on the maps passed"
    )
    twin_precision_reason: str
    twin_bf16_spearman: float | None = Field(
        description="the bf16 gate's rank correlation with FP32 maps; null where not tried"
    )
    one_pass: str | None = Field(
        description="how the one-pass explainer (fastshap) runs: grafted onto the served graph "
        "(one run gives the prediction and the map) or on its own beside the prediction, and "
        "why; null where the bundle has none"
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
