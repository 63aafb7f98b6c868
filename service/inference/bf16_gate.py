"""Whether the torch twin's sampled gradient passes (SmoothGrad, integrated gradients, synthesis:
everything through ``common.twin.input_gradients``'s forward function) run in bfloat16.

Only a CPU with bfloat16 arithmetic (``avx512_bf16``, ``amx_bf16``) is tried: elsewhere torch
emulates it and it only costs. Where one is, a parity gate decides at load: the input-gradient
saliency maps of the top class on the bundle's fixed probe images, in FP32 and under bfloat16
autocast, must rank their pixels alike (Spearman >= ``MIN_SPEARMAN`` on each). The decision is
made once, at load, so every map a loaded model makes is made the same way. On the project's
AMD EPYC (avx512_bf16) the gate measured 0.98 on the probe images and 0.77 on a test face's map:
bfloat16 stays off there.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np
import torch

from service.common.cancellation import Cancellation
from service.common.twin import LogitsOnly, input_gradients, set_bf16
from service.explain.heatmap import split_half_agreement
from service.inference.precision_probe import CpuInfo

log = logging.getLogger(__name__)

BF16_FLAGS = ("avx512_bf16", "amx_bf16")
MIN_SPEARMAN = 0.99
"""The maps' rank correlation bfloat16 must keep with FP32 (issue 27's gate)."""


@dataclass(frozen=True)
class TwinPrecision:
    """How the twin's gradient passes run, and why (``/model``'s ``runtime.twin_precision``)."""

    dtype: Literal["fp32", "bf16"]
    reason: str
    spearman: float | None = None
    """the gate's rank correlation; None where the CPU was not tried"""


def decide(cpu: CpuInfo, spearman: float | None, threshold: float = MIN_SPEARMAN) -> TwinPrecision:
    """The decision from its inputs alone: bfloat16 where the CPU has a bfloat16 flag and the
    gate's ``spearman`` reached ``threshold``, else FP32 with the reason."""
    flags = [flag for flag in cpu.flags if flag in BF16_FLAGS]
    if not flags:
        return TwinPrecision("fp32", "the CPU has no bfloat16 arithmetic (avx512_bf16, amx_bf16)")
    if spearman is None or not spearman >= threshold:  # also NaN
        shown = "not measured" if spearman is None else f"{spearman:.3f}"
        return TwinPrecision(
            "fp32",
            f"{', '.join(flags)}: bfloat16 maps' rank correlation with FP32 {shown}, below "
            f"{threshold}",
            spearman,
        )
    return TwinPrecision(
        "bf16",
        f"{', '.join(flags)}: bfloat16 maps' rank correlation with FP32 {spearman:.3f} >= "
        f"{threshold}",
        spearman,
    )


def saliency(twin: Any, x: np.ndarray, bf16: bool) -> np.ndarray:
    """``(H, W)`` |d top logit / d input|, largest over channels, of ``x`` ``(3, H, W)`` through
    the forward function the gradient passes use (``LogitsOnly``), with or without bfloat16."""
    with input_gradients(twin):
        forward = LogitsOnly(twin, Cancellation(), bf16=bf16)
        inputs = torch.from_numpy(np.array(x[None], dtype=np.float32)).requires_grad_(True)
        logits = forward(inputs)
        (gradient,) = torch.autograd.grad(logits[0, int(logits[0].argmax())], inputs)
    return gradient.abs().amax(dim=1)[0].numpy()


def map_parity(twin: Any, probe: np.ndarray) -> float:
    """The lowest Spearman rank correlation of the FP32 and bfloat16 saliency maps of the
    images of ``probe`` ``(N, 3, H, W)``."""
    return min(
        split_half_agreement(saliency(twin, x, False), saliency(twin, x, True)) for x in probe
    )


def choose_twin_precision(
    twin: Any, probe: np.ndarray, cpu: CpuInfo, threshold: float = MIN_SPEARMAN
) -> TwinPrecision:
    """Try bfloat16 where ``cpu`` has it (the gate on ``probe``, the bundle's fixed probe
    batch), mark the twin accordingly (``common.twin.set_bf16``) and say what was chosen."""
    spearman = map_parity(twin, probe) if any(f in BF16_FLAGS for f in cpu.flags) else None
    choice = decide(cpu, spearman, threshold)
    set_bf16(twin, choice.dtype == "bf16")
    log.info("twin gradient passes: %s (%s)", choice.dtype, choice.reason)
    return choice
