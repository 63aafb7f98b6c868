"""Sampling that stops when the map has converged: ``stop=converged`` against the fixed budget.

In process, FP32 ONNX Runtime (the bundle's model.onnx) and the torch twin, on test-split faces
of split.json, for the predicted class. For every method with a ``stop`` parameter, each face
is explained twice, interleaved (so machine load hits both alike): as it was before ``stop``
existed (``TODAY``: its budget, ``stop=fixed``; occlusion with ``refine`` 0.3, 78 windows,
as earlier versions ran it) and at its defaults with ``stop=converged`` (occlusion: at its
defaults, whose ``stop`` is fixed). Per
method it prints the samples used (mean, p50, max, of the budget), the forward passes (ONNX
calls and twin passes, the prediction included), the deletion AUC of both maps (lower = more
faithful) with the mean difference and its standard error, the Spearman agreement of the two
maps, and the gate: converged may be the default only where its deletion AUC stays within
``AUC_GATE`` of the fixed budget's. The CPU's model heads the output.

    python bench/bench_converged.py [--n 24] [--methods lime,rise,...] [--threads 2]
"""

from __future__ import annotations

import argparse
import os
import time
from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np
import torch
from _common import add_bundle_args, cpu_model, machine_load
from bench_explain import load_faces
from scipy.stats import spearmanr

from service.bundle.checks import load_twin
from service.bundle.format import ONNX_FILE, read_meta
from service.bundle.preprocess import Preprocessor
from service.common.cancellation import Cancellation
from service.explain import EXPLAINERS, ModelHandle
from service.explain.faithfulness import deletion_auc
from service.inference.engine import create_session

AUC_GATE = 0.01
# Each method as it ran before stop= existed: its budget, all of it.
TODAY: dict[str, dict[str, Any]] = {
    "lime": {"stop": "fixed"},
    "rise": {"stop": "fixed"},
    "smoothgrad": {"stop": "fixed"},
    "integrated_gradients": {"stop": "fixed"},
    "occlusion": {"stop": "fixed", "refine": 0.3},
}
# What each method runs as the new side: converged, except where the default stays fixed.
NEW: dict[str, dict[str, Any]] = {
    "lime": {"stop": "converged"},
    "rise": {"stop": "converged"},
    "smoothgrad": {"stop": "converged"},
    "integrated_gradients": {"stop": "converged"},
    "occlusion": {},
}


def get_args_parser() -> argparse.ArgumentParser:
    parser = add_bundle_args(argparse.ArgumentParser(description=__doc__.split("\n\n")[0]))
    parser.add_argument("--n", type=int, default=24, help="test faces (default: 24)")
    parser.add_argument(
        "--methods",
        default=",".join(TODAY),
        help=f"comma-separated methods (default: {','.join(TODAY)})",
    )
    parser.add_argument(
        "--threads", type=int, default=2, help="ONNX Runtime and torch threads (default: 2)"
    )
    return parser


@dataclass
class Runs:
    """One method's readings over the faces, for the fixed budget and for converged."""

    used: dict[str, list[int]] = field(default_factory=lambda: {"fixed": [], "converged": []})
    planned: list[int] = field(default_factory=list)
    passes: dict[str, list[int]] = field(default_factory=lambda: {"fixed": [], "converged": []})
    seconds: dict[str, list[float]] = field(default_factory=lambda: {"fixed": [], "converged": []})
    auc: dict[str, list[float]] = field(default_factory=lambda: {"fixed": [], "converged": []})
    agreement: list[float] = field(default_factory=list)


class Counted:
    """A ``ModelHandle`` whose forward passes are counted: ONNX calls and the twin's passes."""

    def __init__(self, handle: ModelHandle) -> None:
        self.passes = 0
        forward = handle.forward

        def counted(batch: np.ndarray) -> np.ndarray:
            self.passes += 1
            return forward(batch)

        self.handle = replace(handle, forward=counted, cancellation=Cancellation(self._count))

    def _count(self) -> None:
        self.passes += 1


def measure(handle: ModelHandle, method: str, faces: list, runs: Runs) -> None:
    explainer = EXPLAINERS[method]
    for x, _, _ in faces:
        target = int(np.argmax(handle.forward(x[None])[0]))
        maps = {}
        for stop, params in (("fixed", TODAY[method]), ("converged", NEW[method])):
            counted = Counted(handle)
            started = time.perf_counter()
            heatmap = explainer(counted.handle).attribute(x, target, **params)
            runs.seconds[stop].append(time.perf_counter() - started)
            assert heatmap.sampling is not None, f"{method} reports no sampling"
            runs.used[stop].append(heatmap.sampling.used)
            runs.passes[stop].append(counted.passes)
            runs.auc[stop].append(deletion_auc(handle.forward, x, heatmap.values, target))
            maps[stop] = heatmap.values
            if stop == "converged":
                runs.planned.append(heatmap.sampling.planned)
        runs.agreement.append(spearmanr(maps["fixed"].ravel(), maps["converged"].ravel())[0])


def report(method: str, runs: Runs) -> bool:
    """Print the method's row; True where converged passes the deletion AUC gate."""
    used = np.array(runs.used["converged"])
    fixed, converged = (np.array(runs.auc[s]) for s in ("fixed", "converged"))
    difference = converged - fixed
    sem = difference.std(ddof=1) / np.sqrt(difference.size) if difference.size > 1 else 0.0
    within = abs(difference.mean()) <= AUC_GATE
    default = EXPLAINERS[method].Params().stop  # type: ignore[attr-defined]
    print(
        f"{method:<22}{used.mean():>7.1f}{np.median(used):>6.0f}{used.max():>6d}"
        f"{int(np.mean(runs.used['fixed'])):>7d}"
        f"{np.mean(runs.passes['fixed']):>8.1f}{np.mean(runs.passes['converged']):>7.1f}"
        f"{np.mean(runs.seconds['fixed']):>8.2f}{np.mean(runs.seconds['converged']):>7.2f}"
        f"{fixed.mean():>9.4f}{converged.mean():>9.4f}{difference.mean():>+9.4f} ± {sem:.4f}"
        f"{np.mean(runs.agreement):>7.3f}{np.min(runs.agreement):>7.3f}"
        f"  {'ok' if within else 'FAILED':<7}{default}"
    )
    return within


def main(args: argparse.Namespace) -> None:
    torch.set_num_threads(args.threads)
    meta = read_meta(args.model)
    session = create_session(args.model / ONNX_FILE, "cpu", args.threads)

    def forward(batch: np.ndarray) -> np.ndarray:
        return session.run(["logits"], {"input": batch})[0]

    handle = ModelHandle(forward, load_twin(args.model), meta.gradcam_layer)
    faces = load_faces(args.model, args.data, args.n, Preprocessor(meta.input))
    print(
        f"bundle {meta.name} {meta.version}; CPU {cpu_model()}, {os.cpu_count()} cores; FP32 "
        f"ONNX Runtime and the torch twin, {args.threads} threads; {len(faces)} test faces; "
        f"{machine_load({os.getpid()})}"
    )
    print(
        "\nsamples used with stop=converged (mean, p50, max) against the fixed budget; forward "
        "passes and seconds per map (fixed, converged); deletion AUC (fixed, converged, "
        f"difference ± s.e.); Spearman of the two maps (mean, min); gate ±{AUC_GATE}; the "
        "method's default stop"
    )
    print(
        f"{'method':<22}{'mean':>7}{'p50':>6}{'max':>6}{'budget':>7}{'passes':>8}{'':>7}"
        f"{'s/map':>8}{'':>7}{'AUC fix':>9}{'AUC conv':>9}{'difference':>18}{'rho':>7}"
        f"{'min':>7}  {'gate':<7}default"
    )
    for method in args.methods.split(","):
        runs = Runs()
        measure(handle, method, faces, runs)
        report(method, runs)
    print(f"\nafter: {machine_load({os.getpid()})}")


if __name__ == "__main__":
    main(get_args_parser().parse_args())
