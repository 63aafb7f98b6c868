"""What a fastshap map costs with the one-pass explainer on its own beside the prediction, and
grafted onto the served graph (one run gives the prediction and the map), on each ONNX graph
the service can serve, against the pass unit.

The explainer's work, as the service runs it, without HTTP: ``FastShap`` on a worker thread,
its prediction (where it needs one) queued on an inference thread of its own, as the batcher
runs it. Variants are interleaved round by round over ``--faces`` test faces (a change in the
machine's load hits all of them); each prints the p50 wall and process CPU milliseconds of one
map, in passes too (one image's FP32 forward pass at batch 32 on raw ONNX Runtime, measured in
the same run), and how the map ranks the face's pixels against the FP32 explainer's own map
(Spearman: median and lowest over the faces).

    python bench/bench_one_pass.py [--faces 16] [--rounds 5] [--threads 0]
"""

from __future__ import annotations

import argparse
import os
import statistics
import time
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor

import numpy as np
from _common import machine_load
from bench_twin_pass import add_rounds_args, pass_ms, split_inputs
from scipy.stats import spearmanr

from service.bundle.checks import probe_batch
from service.bundle.format import INT8_FILE, ONNX_FILE, read_meta
from service.bundle.preprocess import Preprocessor
from service.explain import ModelHandle
from service.explain.one_pass import FastShap, OnePassModel
from service.inference.engine import create_session
from service.inference.one_pass_load import load_one_pass
from service.inference.precision_probe import cpu_info

Variant = tuple[str, Callable[[np.ndarray], np.ndarray], OnePassModel]


def get_args_parser() -> argparse.ArgumentParser:
    parser = add_rounds_args(argparse.ArgumentParser(description=__doc__.split("\n\n")[0]), 16)
    parser.add_argument(
        "--threads", type=int, default=0, help="intra-op threads (default: 0, the service's)"
    )
    return parser


def variants(args: argparse.Namespace, probe: np.ndarray) -> list[Variant]:
    """For each graph the bundle has: the explainer on its own, and grafted onto it."""
    meta = read_meta(args.model)
    found = []
    for graph in (ONNX_FILE, INT8_FILE):
        if not (args.model / graph).is_file():
            continue
        session = create_session(args.model / graph, "cpu", args.threads)

        def forward(batch: np.ndarray, session=session) -> np.ndarray:
            return session.run(["logits"], {"input": batch})[0]

        for served in (None, graph):
            loaded = load_one_pass(args.model, meta, forward, probe, "cpu", args.threads, served)
            if loaded is None:
                raise SystemExit(f"{args.model} has no one-pass explainer")
            how = "grafted" if loaded.predict is not None else "on its own"
            found.append((f"{graph}, {how}", forward, loaded))
    return found


def one_map(
    forward: Callable[[np.ndarray], np.ndarray],
    one_pass: OnePassModel,
    inference: ThreadPoolExecutor,
    x: np.ndarray,
) -> tuple[float, float, np.ndarray]:
    """Wall and process CPU milliseconds of one map of ``x``, and the map."""

    def forward_soon(batch: np.ndarray) -> Future[np.ndarray]:
        return inference.submit(forward, batch)

    handle = ModelHandle(forward, forward_soon=forward_soon, one_pass=one_pass)
    wall, cpu = time.perf_counter(), time.process_time()
    heatmap = FastShap(handle).attribute(x)
    wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
    return wall * 1000, cpu * 1000, heatmap.values


def main(args: argparse.Namespace) -> None:
    meta = read_meta(args.model)
    preprocess = Preprocessor(meta.input)
    faces = split_inputs(args, preprocess)
    found = variants(args, probe_batch(preprocess))
    unit = pass_ms(args.model, faces[0])
    print(f"CPU {cpu_info().describe()}; {machine_load({os.getpid()})}")
    print(f"a pass: {unit:.2f} ms (FP32, raw ONNX Runtime, batch 32)")
    table: dict[str, list[tuple[float, float, np.ndarray]]] = {}
    with ThreadPoolExecutor(1) as inference, ThreadPoolExecutor(1) as worker:
        for round_ in range(args.rounds + 1):  # round 0 warms every variant up
            for name, forward, one_pass in found if round_ % 2 else found[::-1]:
                results = [
                    worker.submit(one_map, forward, one_pass, inference, x).result() for x in faces
                ]
                if round_:
                    table.setdefault(name, []).extend(results)
    reference = table[found[0][0]]  # the FP32 explainer on its own, as the bundle ships it
    print(f"\n{'variant':<30}{'wall p50 ms':>12}{'passes':>8}{'CPU p50 ms':>12}{'Spearman':>18}")
    for name, results in table.items():
        wall = statistics.median(r[0] for r in results)
        cpu = statistics.median(r[1] for r in results)
        rhos = [
            float(spearmanr(a[2].ravel(), b[2].ravel())[0])
            for a, b in zip(results, reference, strict=True)
        ]
        agreement = f"{statistics.median(rhos):.3f} (min {min(rhos):.3f})"
        print(f"{name:<30}{wall:>12.2f}{wall / unit:>8.2f}{cpu:>12.2f}{agreement:>18}")
    print(f"\n{machine_load({os.getpid()})}")


if __name__ == "__main__":
    main(get_args_parser().parse_args())
