"""Occlusion and LIME with less work for the same answer: old against new, in one run.

In process, FP32 ONNX Runtime (the bundle's model.onnx), on test-split faces of split.json,
for the predicted class; three tables:

1. occlusion at window 24, stride 12: ``strategy=exhaustive`` (every window) and
   ``coarse_to_fine`` (the default) at each ``--refine`` share, the first (0.3, 78 windows:
   earlier versions' default) the reference: windows scored, seconds per map (interleaved face
   by face, so machine load hits all alike), deletion AUC (lower = more faithful) and its
   difference from the reference's (gate: within 0.01), and the Spearman rank correlation of
   each map with the reference's;
2. the exact incremental variant (Krypton, Nakandala et al. 2019), weighed, not built: from
   the twin's graph, for every window position, the multiply-adds of each convolution
   restricted to the output units the patch can change (its projective field), against the
   full pass: the most an exact incremental engine could save, at perfect efficiency;
3. LIME at its defaults and at half the samples: seconds, deletion AUC and seed-to-seed
   stability (Spearman correlation of the superpixel weights between ``--seeds`` seeds, mean
   over pairs and faces).

    python bench/bench_perturb.py [--n 50] [--lime-n 50] [--stability-faces 10] [--seeds 3]
                                  [--threads 2] [--refine 0.3 0.25 ...]
"""

from __future__ import annotations

import argparse
import math
import os
import time
from collections.abc import Callable
from itertools import combinations
from typing import Any

import numpy as np
from _common import add_bundle_args, machine_load
from bench_explain import _mean_sem, load_faces
from scipy.stats import spearmanr

from service.bundle.checks import load_twin
from service.bundle.format import ONNX_FILE, read_meta
from service.bundle.preprocess import Preprocessor
from service.explain import Lime, ModelHandle, Occlusion
from service.explain.faithfulness import deletion_auc
from service.explain.lime import superpixels
from service.explain.occlusion import window_starts
from service.inference.engine import create_session
from service.insight.architecture import CONVOLUTIONS, POOLS, _arguments, _pair

WINDOW, STRIDE = 24, 12
AUC_GATE = 0.01


def get_args_parser() -> argparse.ArgumentParser:
    parser = add_bundle_args(argparse.ArgumentParser(description=__doc__.split("\n\n")[0]))
    parser.add_argument("--n", type=int, default=50, help="test faces for occlusion (default: 50)")
    parser.add_argument(
        "--lime-n", type=int, default=50, help="test faces for LIME's AUC (default: 50)"
    )
    parser.add_argument(
        "--stability-faces",
        type=int,
        default=10,
        help="faces for LIME's seed-to-seed stability (default: 10)",
    )
    parser.add_argument(
        "--seeds", type=int, default=3, help="LIME seeds compared pairwise (default: 3)"
    )
    parser.add_argument(
        "--threads", type=int, default=2, help="ONNX Runtime intra-op threads (default: 2)"
    )
    parser.add_argument(
        "--refine",
        type=float,
        nargs="+",
        default=[0.3, 0.25, 0.2, 0.15, 0.1],
        help="occlusion's refine shares, the first the reference (default: 0.3 0.25 0.2 0.15 0.1)",
    )
    return parser


class Counted:
    """A forward function that counts the images it is given."""

    def __init__(self, forward: Callable[[np.ndarray], np.ndarray]) -> None:
        self.forward, self.images = forward, 0

    def __call__(self, batch: np.ndarray) -> np.ndarray:
        self.images += len(batch)
        return self.forward(batch)


def occlusion_table(
    forward: Callable[[np.ndarray], np.ndarray], faces: list, shares: list[float]
) -> None:
    """Exhaustive occlusion and ``coarse_to_fine`` at each refine share in ``shares`` (the first
    is the reference: 0.3, earlier versions' default), interleaved face by face."""
    variants: dict[str, dict[str, Any]] = {"exhaustive": {"strategy": "exhaustive"}}
    variants |= {
        f"refine {share:g}": {"strategy": "coarse_to_fine", "refine": share} for share in shares
    }
    rows: dict[str, dict[str, list[float]]] = {
        name: {"passes": [], "seconds": [], "auc": []} for name in variants
    }
    reference = f"refine {shares[0]:g}"
    rhos: dict[str, list[float]] = {name: [] for name in variants}
    for x, _, _ in faces:
        target = int(np.argmax(forward(x[None])[0]))
        maps = {}
        for name, params in variants.items():
            counted = Counted(forward)
            started = time.perf_counter()
            maps[name] = (
                Occlusion(ModelHandle(counted))
                .attribute(x, target, window=WINDOW, stride=STRIDE, **params)
                .values
            )
            rows[name]["seconds"].append(time.perf_counter() - started)
            rows[name]["passes"].append(counted.images - 1)  # less the unperturbed pass
            rows[name]["auc"].append(deletion_auc(forward, x, maps[name], target))
        for name in variants:
            rhos[name].append(spearmanr(maps[name].ravel(), maps[reference].ravel()).statistic)
    base = np.array(rows[reference]["auc"])
    print(f"\n1. Occlusion, window {WINDOW} stride {STRIDE}, {len(faces)} test faces, FP32 ONNX")
    print(
        f"{'variant':<14}{'windows':>8}{'s / map':>10}{'deletion AUC':>18}"
        f"{f'vs {reference}':>24}{'gate':>8}{'Spearman':>10}"
    )
    for name, row in rows.items():
        auc = np.array(row["auc"])
        difference = auc - base
        sem = difference.std(ddof=1) / np.sqrt(difference.size) if difference.size > 1 else 0.0
        within = abs(difference.mean()) <= AUC_GATE
        print(
            f"{name:<14}{np.mean(row['passes']):>8.0f}{np.mean(row['seconds']):>10.3f}"
            f"{_mean_sem(auc):>18}{difference.mean():>+15.4f} ± {sem:.4f}"
            f"{'ok' if within else 'FAILED':>8}{np.mean(rhos[name]):>10.3f}"
        )
    print(f"default: refine {Occlusion.Params().refine:g} (gate ±{AUC_GATE} of {reference})")


def incremental_ceiling(twin, size: int) -> tuple[float, dict[str, tuple[float, float]]]:
    """Share of the full pass's convolution multiply-adds that an exact incremental engine
    must still do, over every window position, and per convolution ``(full MACs per pass,
    share of its output units a patch changes)``."""
    starts = window_starts(size, WINDOW, STRIDE)
    part: dict[str, float] = {}
    full: dict[str, float] = {}
    for top in starts:
        for left in starts:
            for name, (changed, whole) in _changed_macs(twin, top, left).items():
                part[name] = part.get(name, 0.0) + changed
                full[name] = full.get(name, 0.0) + whole
    per_pass = {name: (full[name] / len(starts) ** 2, part[name] / full[name]) for name in full}
    return sum(part.values()) / sum(full.values()), per_pass


def _changed_macs(twin, top: int, left: int) -> dict[str, tuple[int, int]]:
    """Per convolution: multiply-adds over the output units a ``WINDOW`` patch at ``(top,
    left)`` can change (their bounding box, per axis an interval), and over all units."""
    changed: dict = {}
    macs = {}
    for node in twin.graph.nodes:
        value = node.meta.get("val")
        if getattr(value, "ndim", 0) != 4:
            continue
        if node.op == "placeholder":
            changed[node] = ((top, top + WINDOW - 1), (left, left + WINDOW - 1))
            continue
        inputs = [changed[n] for n in node.all_input_nodes if n in changed]
        if node.op != "call_function" or not inputs:
            continue
        height, width = value.shape[-2:]
        if node.target in CONVOLUTIONS or node.target in POOLS:
            args = _arguments(node)
            if node.target in CONVOLUTIONS:
                kernel = int(args["weight"].meta["val"].shape[-1])
            else:
                kernel = _pair(args["kernel_size"], 1)[0]
            stride = _pair(args.get("stride"), 0)[0] or kernel
            pad = _pair(args.get("padding"), 0)[0]

            def units(lo: int, hi: int, count: int, k=kernel, s=stride, p=pad) -> tuple[int, int]:
                return max(0, math.ceil((lo + p - k + 1) / s)), min(count - 1, (hi + p) // s)

            (r0, r1), (c0, c1) = inputs[0]
            changed[node] = (units(r0, r1, height), units(c0, c1, width))
            if node.target in CONVOLUTIONS:
                (r0, r1), (c0, c1) = changed[node]
                per_unit = int(np.prod(args["weight"].meta["val"].shape))
                macs[node.name] = (
                    (r1 - r0 + 1) * (c1 - c0 + 1) * per_unit,
                    height * width * per_unit,
                )
        else:  # element-wise (ReLU, affine, residual add, end padding): the union
            changed[node] = tuple(
                (min(i[axis][0] for i in inputs), max(i[axis][1] for i in inputs))
                for axis in (0, 1)
            )
    return macs


def incremental_table(twin, size: int) -> None:
    share, per_conv = incremental_ceiling(twin, size)
    full = sum(macs for macs, _ in per_conv.values())
    early = list(per_conv.items())[:8]
    print(
        f"\n2. Exact incremental occlusion (not built): {len(per_conv)} convolutions, "
        f"{full / 1e6:.0f} M multiply-adds per pass; over the {WINDOW}/{STRIDE} windows an exact "
        f"engine still needs {share:.3f} of them (at best {1 / share:.2f}x fewer)"
    )
    print(
        "share of output units one patch changes, first convolutions: "
        + ", ".join(f"{name} {changed:.2f}" for name, (_, changed) in early)
    )


def lime_table(
    forward: Callable[[np.ndarray], np.ndarray], faces: list, stability_faces: int, seeds: int
) -> None:
    defaults = Lime.Params()
    handle = ModelHandle(forward)
    print(
        f"\n3. LIME ({defaults.num_segments} segments), {len(faces)} test faces for the AUC, "
        f"{stability_faces} for stability over seeds 0..{seeds - 1}"
    )
    print(f"{'num_samples':<14}{'s / map':>10}{'deletion AUC':>18}{'seed rho':>10}")
    for samples in (defaults.num_samples, defaults.num_samples // 2):
        seconds, aucs, rhos = [], [], []
        for index, (x, _, _) in enumerate(faces):
            target = int(np.argmax(forward(x[None])[0]))
            first = index < stability_faces
            segments = superpixels(x, defaults.num_segments)
            # one pixel per superpixel: the map is constant on each
            _, representative = np.unique(segments.ravel(), return_index=True)
            weights = []
            for seed in range(seeds if first else 1):
                started = time.perf_counter()
                heatmap = Lime(handle).attribute(x, target, num_samples=samples, seed=seed)
                seconds.append(time.perf_counter() - started)
                weights.append(heatmap.values.ravel()[representative])
                if seed == 0:
                    aucs.append(deletion_auc(forward, x, heatmap.values, target))
            if first:
                pairs = combinations(weights, 2)
                rhos.append(np.mean([spearmanr(a, b).statistic for a, b in pairs]))
        label = f"{samples}" + (" (default)" if samples == defaults.num_samples else "")
        print(
            f"{label:<14}{np.mean(seconds):>10.3f}{_mean_sem(np.array(aucs)):>18}"
            f"{np.mean(rhos):>10.3f}"
        )


def main(args: argparse.Namespace) -> None:
    meta = read_meta(args.model)
    preprocess = Preprocessor(meta.input)
    session = create_session(args.model / ONNX_FILE, "cpu", args.threads)

    def forward(batch: np.ndarray) -> np.ndarray:
        return session.run(["logits"], {"input": batch})[0]

    faces = load_faces(args.model, args.data, max(args.n, args.lime_n), preprocess)
    print(
        f"bundle {meta.name} {meta.version}; FP32 ONNX Runtime, {args.threads} threads; "
        f"{os.cpu_count()} cores; {machine_load({os.getpid()})}"
    )
    occlusion_table(forward, faces[: args.n], args.refine)
    incremental_table(load_twin(args.model), meta.input.height)
    lime_table(forward, faces[: args.lime_n], args.stability_faces, args.seeds)
    print(f"\nafter: {machine_load({os.getpid()})}")


if __name__ == "__main__":
    main(get_args_parser().parse_args())
