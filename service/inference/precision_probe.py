"""Which ONNX graph ``precision=auto`` serves: FP32 and INT8 timed on the CPU the process starts
on, and the choice made from those times, the INT8 gates and the CPU's flags.

INT8 pays only where the CPU has an 8-bit dot-product instruction (AVX-512 VNNI, AVX-VNNI, AMX):
there ONNX Runtime's INT8 kernels ran the committed graph in 0.42-0.71 of FP32's time; on an
AVX2-only CPU in 0.92-1.03. Flags alone cannot say which side a CPU is on (a hypervisor may hide
or show them, ORT may lack a kernel for one), so the probe measures, and the flags go into the
reason and the log to explain the figure.

The probe is bounded by work, not by time: ``PROBE_ROUNDS`` rounds, each running both graphs
once on the bundle's fixed probe batch, in alternating order (a drift in the machine's speed
hits both alike), on sessions with one intra-op thread, so that the calling thread does all the
work and its CPU time (``time.thread_time``) is the graph's cost. A busy neighbour delays that
thread but does not add to its CPU time; the fastest round of each graph drops the rounds an
interrupt or a cold cache slowed. The decision is made once per process: ``probe_graphs`` keeps
its answer per pair of files (by sha256), so a second app in the same process serves the same.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import Literal

import numpy as np
import onnxruntime as ort

from service.bundle.checks import ServedGraph, served_graph
from service.bundle.format import ONNX_FILE, BundleMeta
from service.inference.engine import CUDA, choose_providers, create_session

log = logging.getLogger(__name__)

INT8_MARGIN = 0.8
"""INT8 serves under ``auto`` only when its probe time is at most this fraction of FP32's (at
least 1.25x faster). The two kinds of CPU measured 0.42-0.71 (VNNI/AMX) and 0.92-1.03 (AVX2
only); 0.8 leaves a gap of about 0.1 to either side, more than the probe's spread under load
(docs/operations.md#precision-fp32-int8-or-auto)."""

PROBE_ROUNDS = 7
"""Rounds of the probe: each runs both graphs once on the probe batch, after one unmeasured run
of each (its first run allocates)."""

CPU_FLAGS = ("avx2", "avx512f", "avx512_vnni", "avx_vnni", "avx512_bf16", "amx_bf16", "amx_int8")
"""The flags that bear on the reduced-precision kernels; the others are not shown."""
INT8_DOT_FLAGS = ("avx512_vnni", "avx_vnni", "amx_int8")
"""An 8-bit dot-product instruction: the INT8 kernels' speed-up comes from one of these."""

Graph = Literal["fp32", "int8"]


@dataclass(frozen=True)
class CpuInfo:
    """The CPU as the kernel describes it (``/proc/cpuinfo``): model name and the flags of
    ``CPU_FLAGS`` it has. Elsewhere (no ``/proc/cpuinfo``) the model is ``unknown`` and the
    flags are empty: the probe still decides."""

    model: str
    flags: tuple[str, ...]

    @property
    def int8_dot(self) -> tuple[str, ...]:
        return tuple(flag for flag in self.flags if flag in INT8_DOT_FLAGS)

    def describe(self) -> str:
        return f"{self.model} ({', '.join(self.flags) or 'no listed flags'})"


def parse_cpuinfo(text: str) -> CpuInfo:
    """``CpuInfo`` of the first processor in ``/proc/cpuinfo``'s ``text``."""
    model, flags = "unknown", frozenset[str]()
    for line in text.splitlines():
        key, _, value = line.partition(":")
        key = key.strip()
        if key == "model name" and model == "unknown":
            model = value.strip()
        elif key in ("flags", "Features") and not flags:  # x86, arm64
            flags = frozenset(value.split())
    return CpuInfo(model, tuple(flag for flag in CPU_FLAGS if flag in flags))


@cache
def cpu_info(path: Path = Path("/proc/cpuinfo")) -> CpuInfo:
    """This machine's ``CpuInfo`` (read once)."""
    try:
        return parse_cpuinfo(path.read_text())
    except OSError:
        return CpuInfo("unknown", ())


@dataclass(frozen=True)
class ProbeTimes:
    """Fastest CPU seconds of one run of each graph on the probe batch."""

    fp32_s: float
    int8_s: float
    rounds: int
    batch: int

    @property
    def ratio(self) -> float:
        """INT8's time over FP32's: below 1, INT8 is faster."""
        return self.int8_s / self.fp32_s


@dataclass(frozen=True)
class PrecisionChoice:
    """What ``precision`` serves and why, for ``/model`` and the start-up log."""

    graph: Graph
    setting: str
    reason: str
    cpu: CpuInfo
    times: ProbeTimes | None = None
    """the probe's figures; None where no probe ran (an explicit setting, nothing to compare)"""


def choose(
    times: ProbeTimes, gates_passed: bool, cpu: CpuInfo, margin: float = INT8_MARGIN
) -> PrecisionChoice:
    """The ``auto`` decision from its inputs alone (no clock read here): INT8 when its gates
    passed and it measured at most ``margin`` of FP32's time, else FP32; the reason names the
    ratio and the CPU's 8-bit dot-product flags."""
    dot = ", ".join(cpu.int8_dot) or "no VNNI/AMX"
    measured = f"INT8 took {times.ratio:.2f} of FP32's CPU time ({dot})"
    if not gates_passed:
        return PrecisionChoice(
            "fp32", "auto", f"{measured}, but its accuracy gates failed in meta.json", cpu, times
        )
    if times.ratio <= margin:
        return PrecisionChoice(
            "int8", "auto", f"{measured}: at most {margin:.2f}, INT8 serves", cpu, times
        )
    return PrecisionChoice(
        "fp32", "auto", f"{measured}: above {margin:.2f}, INT8 does not pay here", cpu, times
    )


Forward = Callable[[np.ndarray], object]


def time_graphs(
    fp32: Forward, int8: Forward, batch: np.ndarray, rounds: int = PROBE_ROUNDS
) -> ProbeTimes:
    """Best-of-``rounds`` thread CPU time of ``fp32(batch)`` and ``int8(batch)``, interleaved
    (FP32 first in even rounds, INT8 first in odd ones), after one unmeasured run of each. The
    forwards must run on the calling thread (one intra-op thread) for its CPU time to count
    their work."""
    fp32(batch)
    int8(batch)
    best = {"fp32": float("inf"), "int8": float("inf")}
    for round_ in range(rounds):
        order = (("fp32", fp32), ("int8", int8))
        for name, forward in order if round_ % 2 == 0 else order[::-1]:
            started = time.thread_time()
            forward(batch)
            best[name] = min(best[name], time.thread_time() - started)
    return ProbeTimes(best["fp32"], best["int8"], rounds, len(batch))


def _single_thread_forward(path: Path) -> Forward:
    session = create_session(path, "cpu", threads=1)
    name = session.get_inputs()[0].name
    return lambda x: session.run(None, {name: x})


_PROBED: dict[tuple[str, str], ProbeTimes] = {}


def probe_graphs(
    fp32_path: Path, int8_path: Path, key: tuple[str, str], batch: np.ndarray
) -> tuple[ProbeTimes, float]:
    """``time_graphs`` on single-thread CPU sessions of both files, on ``batch`` (the bundle's
    fixed probe input), once per process and ``key`` (the files' sha256): the times, and the
    seconds this call spent (0 when the process had already probed that pair)."""
    started = time.perf_counter()
    if key not in _PROBED:
        forward32 = _single_thread_forward(fp32_path)
        forward8 = _single_thread_forward(int8_path)
        _PROBED[key] = time_graphs(forward32, forward8, batch)
    return _PROBED[key], time.perf_counter() - started


def explicit(setting: str, graph: Graph, cpu: CpuInfo, reason: str) -> PrecisionChoice:
    return PrecisionChoice(graph, setting, reason, cpu)


def resolve_precision(
    bundle_dir: Path, meta: BundleMeta, setting: str, providers: str, probe: np.ndarray
) -> tuple[ServedGraph, PrecisionChoice]:
    """The graph that serves for the ``precision`` setting, and why. ``fp32`` and ``int8``
    serve what they name; ``auto`` probes the bundle's INT8 graph against FP32 on ``probe``
    (the bundle's fixed probe batch) when its gates passed and the CPU runs the model, and
    ``choose`` decides. ``BundleError`` for int8 on a bundle without it."""
    cpu = cpu_info()
    candidate = served_graph(meta, setting)
    if setting != "auto":
        return candidate, explicit(setting, candidate.precision, cpu, f"precision={setting}")
    int8 = meta.precision.int8
    if int8 is None:
        return candidate, explicit(setting, "fp32", cpu, "the bundle has no INT8 graph")
    if choose_providers(providers, ort.get_available_providers())[0] == CUDA:
        reason = "the probe measures CPU kernels; on CUDA the FP32 graph serves"
        return served_graph(meta, "fp32"), explicit(setting, "fp32", cpu, reason)
    key = (meta.files[ONNX_FILE].sha256, meta.files[int8.file].sha256)
    times, spent_s = probe_graphs(bundle_dir / ONNX_FILE, bundle_dir / int8.file, key, probe)
    choice = choose(times, int8.passed, cpu)
    log.info(
        "precision probe (%d rounds of batch %d, one thread, %.0f ms): FP32 %.1f ms, INT8 "
        "%.1f ms of CPU; CPU %s",
        times.rounds,
        times.batch,
        spent_s * 1000,
        times.fp32_s * 1000,
        times.int8_s * 1000,
        cpu.describe(),
    )
    return served_graph(meta, choice.graph), choice
