"""What one gradient saliency pass of the torch twin costs (forward and backward of one face),
by torch intra-op threads, by the weights' memory format and by the graph (as exported, or with
each convolution's affine folded in, as the service serves it), against the pass unit.

A gradient saliency request is this pass plus about 10 % (decoding, face search, JSON): the
pass decides whether the request meets issue 27's 14 FP32 passes. For each variant (threads
1..N, NCHW or channels-last weights, exported or folded graph) it runs ``--faces`` test faces
``--rounds`` times on a worker thread (as the service does), variants interleaved round by
round (a change in the machine's load hits all of them), and prints the p50 wall and process
CPU milliseconds of one pass, in passes too: one image's FP32 forward pass at batch 32 on raw
ONNX Runtime (the service's default threads), measured in the same run; and the largest
difference of each variant's maps from the first variant's, relative to the map's largest value
(the answer's JSON keeps 4 decimals).

    python bench/bench_twin_pass.py [--faces 8] [--rounds 5] [--threads 1 2]
"""

from __future__ import annotations

import argparse
import os
import statistics
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import torch
from _common import add_bundle_args, machine_load, split_items, spread
from PIL import Image

from service.bundle.checks import load_twin
from service.bundle.format import ONNX_FILE, read_meta
from service.bundle.preprocess import Preprocessor
from service.inference.engine import create_session
from service.inference.precision_probe import cpu_info
from service.inference.twin_fold import fold_affine

PASS_BATCH = 32


def add_rounds_args(parser: argparse.ArgumentParser, faces: int) -> argparse.ArgumentParser:
    """The bundle's arguments, ``--faces`` (default ``faces``) and ``--rounds``: what a bench
    that interleaves variants round by round over test faces takes."""
    add_bundle_args(parser)
    parser.add_argument("--faces", type=int, default=faces, help=f"test faces (default: {faces})")
    parser.add_argument("--rounds", type=int, default=5, help="rounds per variant (default: 5)")
    return parser


def split_inputs(args: argparse.Namespace, preprocess: Preprocessor) -> list[np.ndarray]:
    """``args.faces`` test faces spread over the bundle's split, as model inputs."""
    return [
        preprocess(Image.open(args.data / "celebs8" / relative).convert("RGB"))
        for relative, _ in spread(split_items(args.model, "test"), args.faces)
    ]


def get_args_parser() -> argparse.ArgumentParser:
    parser = add_rounds_args(argparse.ArgumentParser(description=__doc__.split("\n\n")[0]), 8)
    parser.add_argument(
        "--threads",
        type=int,
        nargs="+",
        default=[1, 2],
        help="torch intra-op thread counts to try (default: 1 2)",
    )
    return parser


def pass_ms(model: argparse.Namespace, x: np.ndarray) -> float:
    """Milliseconds of one image's FP32 forward pass at batch ``PASS_BATCH`` (raw ONNX Runtime,
    default threads, best of 5 runs)."""
    session = create_session(model / ONNX_FILE, "cpu", 0)
    batch = np.repeat(x[None], PASS_BATCH, axis=0)
    session.run(None, {"input": batch})
    best = float("inf")
    for _ in range(5):
        started = time.perf_counter()
        session.run(None, {"input": batch})
        best = min(best, time.perf_counter() - started)
    return best * 1000 / PASS_BATCH


def saliency_pass(twin: torch.nn.Module, x: np.ndarray) -> tuple[float, float, np.ndarray]:
    """Wall and process CPU milliseconds of one forward and backward pass, and its map."""
    inputs = torch.from_numpy(np.array(x[None], dtype=np.float32)).requires_grad_(True)
    wall, cpu = time.perf_counter(), time.process_time()
    logits, _ = twin(inputs)
    (gradient,) = torch.autograd.grad(logits[0, int(logits[0].argmax())], inputs)
    wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
    return wall * 1000, cpu * 1000, gradient.abs().amax(dim=1)[0].numpy()


def variants(args: argparse.Namespace) -> Iterator[tuple[str, int, torch.memory_format, bool]]:
    for threads in args.threads:
        for name, memory in (
            ("NCHW", torch.contiguous_format),
            ("channels-last", torch.channels_last),
        ):
            for folded in (False, True):
                graph = "folded" if folded else "exported"
                yield f"{threads} thread(s), {name}, {graph}", threads, memory, folded


def main(args: argparse.Namespace) -> None:
    meta = read_meta(args.model)
    preprocess = Preprocessor(meta.input)
    faces = split_inputs(args, preprocess)
    twins = {False: load_twin(args.model), True: load_twin(args.model)}
    fold_affine(twins[True])  # as the service serves it (service.inference.model)
    for twin in twins.values():
        for parameter in twin.parameters():
            parameter.requires_grad_(False)
    unit = pass_ms(args.model, faces[0])
    print(f"CPU {cpu_info().describe()}; {machine_load({os.getpid()})}")
    print(f"a pass: {unit:.2f} ms (FP32, raw ONNX Runtime, batch {PASS_BATCH})")
    table: dict[str, list[tuple[float, float, np.ndarray]]] = {}
    for round_ in range(args.rounds + 1):  # round 0 warms every variant up
        order = list(variants(args))
        for name, threads, memory, folded in order if round_ % 2 else order[::-1]:
            torch.set_num_threads(threads)
            twin = twins[folded].to(memory_format=memory)
            # on a worker thread of its own, as the service runs it (a new thread takes the
            # thread count just set; the main thread's OpenMP team ran 5-8x slower under load)
            with ThreadPoolExecutor(max_workers=1) as worker:
                results = list(worker.map(lambda x, t=twin: saliency_pass(t, x), faces))
            if round_:
                table.setdefault(name, []).extend(results)
    reference = next(iter(table.values()))
    print(
        f"\n{'variant':<38}{'wall p50 ms':>12}{'passes':>8}{'CPU p50 ms':>12}{'max map diff':>14}"
    )
    for name, results in table.items():
        wall = statistics.median(r[0] for r in results)
        cpu = statistics.median(r[1] for r in results)
        diff = max(
            float(np.abs(a[2] - b[2]).max() / b[2].max())
            for a, b in zip(results, reference, strict=True)
        )
        print(f"{name:<38}{wall:>12.1f}{wall / unit:>8.1f}{cpu:>12.1f}{diff:>14.1e}")
    print(f"\n{machine_load({os.getpid()})}")


if __name__ == "__main__":
    main(get_args_parser().parse_args())
