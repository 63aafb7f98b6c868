"""FP32 against INT8 (the bundle's ``model.int8.onnx``): throughput, and the maps of the methods
that run on the ONNX graph.

One run prints two tables:
1. images per second and CPU milliseconds per image at batch 1 and 32 for both graphs,
   interleaved rounds (``training.quantize.throughput``, the figures ``quantize`` records),
   and what ``precision=auto`` chooses on this CPU (its load-time probe, with the CPU's model
   and flags);
2. for every perturbation method (occlusion, LIME, RISE: the methods without the twin) on
   ``--n`` test faces: the deletion and insertion AUC of its FP32 map and of its INT8 map, both
   judged by the FP32 model (so a map is not graded by the graph that made it), the Spearman
   rank correlation between the two maps, and each map's mean time. Gradient methods run the
   FP32 twin under either precision and are not listed.

    python bench/bench_precision.py [--n 50] [--threads 2] [--rounds 5]
"""

from __future__ import annotations

import argparse
import logging
import os
import time
from collections.abc import Callable

import numpy as np
from _common import add_bundle_args
from bench_explain import load_faces
from onnxruntime import InferenceSession
from scipy.stats import spearmanr

from service.bundle.checks import probe_batch
from service.bundle.format import INT8_FILE, ONNX_FILE, read_meta
from service.bundle.preprocess import Preprocessor
from service.explain import EXPLAINERS, ModelHandle
from service.explain.faithfulness import deletion_auc, insertion_auc
from service.inference.precision_probe import resolve_precision
from training.quantize import session, throughput

PRECISIONS = {"fp32": ONNX_FILE, "int8": INT8_FILE}

log = logging.getLogger("bench_precision")


def get_args_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    add_bundle_args(parser)
    parser.add_argument("--n", type=int, default=50, help="test faces for the maps (default: 50)")
    parser.add_argument(
        "--steps", type=int, default=20, help="deletion/insertion steps per curve (default: 20)"
    )
    parser.add_argument("--threads", type=int, default=2, help="ONNX Runtime threads (default: 2)")
    parser.add_argument(
        "--rounds", type=int, default=5, help="interleaved throughput rounds (default: 5)"
    )
    return parser


def throughput_table(args: argparse.Namespace, faces: list) -> None:
    x = np.stack([face for face, _, _ in faces[:32]] * (32 // min(32, len(faces)) + 1))[:32]
    paths = {name: args.model / file for name, file in PRECISIONS.items()}
    figures = throughput(paths, x, args.threads, args.rounds)
    print(
        f"\n1. Throughput, {figures['threads']} threads, median of {figures['rounds']} "
        f"interleaved rounds (CPU flags: {figures['cpu']})"
    )
    print(f"{'graph':<8}{'img/s b1':>12}{'img/s b32':>12}{'CPU ms b1':>12}{'CPU ms b32':>12}")
    for name in PRECISIONS:
        f = figures[name]
        print(
            f"{name:<8}{f['img_per_s_batch_1']:>12.1f}{f['img_per_s_batch_32']:>12.1f}"
            f"{f['cpu_ms_batch_1']:>12.2f}{f['cpu_ms_batch_32']:>12.2f}"
        )
    meta = read_meta(args.model)
    probe = probe_batch(Preprocessor(meta.input))
    _, choice = resolve_precision(args.model, meta, "auto", "cpu", probe)
    print(f"precision=auto on this CPU ({choice.cpu.describe()}): {choice.graph}: {choice.reason}")


def _forward(sess: InferenceSession) -> Callable[[np.ndarray], np.ndarray]:
    return lambda batch: sess.run(["logits"], {"input": batch})[0]


def maps_table(args: argparse.Namespace, faces: list) -> None:
    sessions = {name: session(args.model / file, args.threads) for name, file in PRECISIONS.items()}
    handles = {name: ModelHandle(_forward(s)) for name, s in sessions.items()}
    judge = handles["fp32"].forward
    # the methods that run on the ONNX graph alone (not the twin, not a model of their own)
    methods = [
        name
        for name, method in EXPLAINERS.items()
        if not method.needs_twin and not getattr(method, "needs_one_pass", False)
    ]
    rows: dict[tuple[str, str], dict[str, list[float]]] = {
        (method, precision): {"deletion": [], "insertion": [], "seconds": []}
        for method in methods
        for precision in PRECISIONS
    }
    rank: dict[str, list[float]] = {method: [] for method in methods}
    for index, (x, _, _) in enumerate(faces, 1):
        target = int(np.argmax(judge(x[None])[0]))
        for method in methods:
            maps = {}
            for precision, handle in handles.items():
                started = time.perf_counter()
                maps[precision] = EXPLAINERS[method](handle).attribute(x, target).values
                row = rows[(method, precision)]
                row["seconds"].append(time.perf_counter() - started)
                row["deletion"].append(
                    deletion_auc(judge, x, maps[precision], target, steps=args.steps)
                )
                row["insertion"].append(
                    insertion_auc(judge, x, maps[precision], target, steps=args.steps)
                )
            rank[method].append(float(spearmanr(maps["fp32"].ravel(), maps["int8"].ravel())[0]))
        log.info("maps: %d/%d faces", index, len(faces))
    print(
        f"\n2. Perturbation maps on {len(faces)} test faces, predicted class, judged by the FP32 "
        f"model, {args.steps} steps (deletion: lower is better; insertion: higher is better)"
    )
    print(
        f"{'method':<12}{'graph':<7}{'deletion AUC':>16}{'insertion AUC':>16}{'time (s)':>10}"
        f"{'rank corr. FP32/INT8':>22}"
    )
    for (method, precision), row in rows.items():
        corr = f"{np.mean(rank[method]):.3f}" if precision == "int8" else ""
        print(
            f"{method:<12}{precision:<7}{np.mean(row['deletion']):>16.4f}"
            f"{np.mean(row['insertion']):>16.4f}{np.mean(row['seconds']):>10.3f}{corr:>22}"
        )


def main(args: argparse.Namespace) -> None:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    meta = read_meta(args.model)
    if meta.precision.int8 is None:
        raise SystemExit(f"{args.model} has no INT8 model: run python -m training quantize first")
    faces = load_faces(args.model, args.data, args.n, Preprocessor(meta.input))
    print(
        f"bundle {meta.name} {meta.version} ({args.model}); {os.cpu_count()} cores; load "
        f"average {os.getloadavg()[0]:.1f}"
    )
    throughput_table(args, faces)
    maps_table(args, faces)


if __name__ == "__main__":
    main(get_args_parser().parse_args())
