"""The service on an NVIDIA GPU against the same service on CPU: same answers, and how fast.

For a machine with a CUDA device and the ``gpu`` extra installed (onnxruntime-gpu; this script
installs nothing). It starts the service as the README does, twice, one after the other:
``python -m service --port N --providers cpu`` (the reference), then ``--providers cuda``
(``CELEBXAI_PROVIDERS=cuda``: the service refuses to become ready without CUDA). On each:
``--faces`` test faces of the bundle's split.json through ``/predict`` (labels) and through
gradient saliency, Grad-CAM, occlusion 24/12 and LIME (maps, one request at a time), then
``/predict`` under ``--clients`` concurrent clients. It checks:

- every ``/predict`` label on the device equals the CPU's;
- the maps of the ONNX-path methods (occlusion, LIME) have Spearman rank correlation
  >= ``--min-spearman`` with the CPU's, face by face; the gradient methods run on the torch
  twin, whose device the service chooses (printed for information, not judged);

and prints the p50 latency of every request type and /predict's throughput on both.

    python bench/gpu_check.py                 # exit 0: all checks pass; 1: one failed;
                                              # 2: no CUDA here (nothing started)
    python bench/gpu_check.py --providers CPUExecutionProvider --faces 4
        # the whole comparison CPU against CPU, on a machine without a GPU: checks the script
"""

from __future__ import annotations

import argparse
import logging
import sys
from typing import TYPE_CHECKING

from _common import ROOT, add_bundle_args, split_items, spread

if TYPE_CHECKING:
    from bench_speed import ServiceRun

OUT = ROOT / "bench" / "results" / "gpu_check"
CUDA = "CUDAExecutionProvider"
CPU = "CPUExecutionProvider"
SERVICE_PROVIDERS = {CUDA: "cuda", CPU: "cpu"}
NO_CUDA_EXIT = 2
ONNX_PATH_METHODS = ("occlusion", "lime")


def get_args_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    add_bundle_args(parser)
    parser.add_argument(
        "--providers",
        choices=sorted(SERVICE_PROVIDERS),
        default=CUDA,
        help=f"ONNX Runtime provider of the service under test (default: {CUDA}; "
        f"{CPU}: a dry run against the CPU reference, for machines without a GPU)",
    )
    parser.add_argument(
        "--faces", type=int, default=16, help="test faces for every check (default: 16)"
    )
    parser.add_argument(
        "--min-spearman",
        type=float,
        default=0.99,
        help="least Spearman correlation of an ONNX-path map with the CPU's (default: 0.99)",
    )
    parser.add_argument(
        "--clients", type=int, default=32, help="/predict concurrent clients (default: 32)"
    )
    parser.add_argument(
        "--duration", type=float, default=5.0, help="/predict load seconds (default: 5)"
    )
    parser.add_argument(
        "--warmup", type=float, default=2.0, help="unmeasured load seconds first (default: 2)"
    )
    parser.set_defaults(stability_n=0)  # measure_service's LIME seed check: not asked here
    return parser


def cuda_missing() -> str | None:
    """Why CUDA cannot be used here, or None when ONNX Runtime and torch both see it."""
    import onnxruntime
    import torch

    reasons = []
    available = onnxruntime.get_available_providers()
    if CUDA not in available:
        reasons.append(
            f"ONNX Runtime offers {available}, no {CUDA} (install the gpu extra: "
            "pip install -e .[gpu], onnxruntime-gpu in place of onnxruntime)"
        )
    if not torch.cuda.is_available():
        reasons.append(f"torch {torch.__version__} sees no CUDA device")
    return "; ".join(reasons) or None


def faces_for(args: argparse.Namespace) -> dict[str, object]:
    """The face sets bench_speed's measure_service takes: ``--faces`` test faces for
    everything, no faithfulness faces."""
    from bench_speed import Face

    items = spread(split_items(args.model, "test"), args.faces)
    chosen = [Face(r, label, (args.data / "celebs8" / r).read_bytes()) for r, label in items]
    warm_relative, warm_label = split_items(args.model, "train")[0]
    warm = Face(warm_relative, warm_label, (args.data / "celebs8" / warm_relative).read_bytes())
    return {"timed": chosen, "warm": warm, "faith": [], "accuracy": chosen, "test": chosen}


def compare(reference: ServiceRun, device: ServiceRun, min_spearman: float) -> list[str]:
    """Print the comparison; return the checks that failed."""
    from _client import rank_correlation
    from bench_speed import ROWS

    failed = []
    same = sum(a == b for a, b in zip(reference.labels, device.labels, strict=True))
    print(f"/predict labels equal on {same} of {len(reference.labels)} faces")
    if same != len(reference.labels):
        failed.append(f"/predict labels differ on {len(reference.labels) - same} faces")
    print(f"{'method':<12}{'Spearman mean':>14}{'min':>8}  judged")
    for row in ROWS:
        rhos = [
            rank_correlation(a, b) if a.shape == b.shape else float("nan")
            for a, b in zip(reference.maps[row.method], device.maps[row.method], strict=True)
        ]
        judged = row.method in ONNX_PATH_METHODS
        worst = min(rhos)
        print(
            f"{row.method:<12}{sum(rhos) / len(rhos):>14.4f}{worst:>8.4f}  "
            f"{f'>= {min_spearman}' if judged else 'no (torch twin)'}"
        )
        if judged and not worst >= min_spearman:
            failed.append(f"{row.method}: a map's Spearman {worst:.4f} < {min_spearman}")
    return failed


def print_latency(runs: list[ServiceRun]) -> None:
    from bench_speed import ROWS

    width = max(14, *(len(run.name) + 2 for run in runs))
    lines = [("p50 latency (ms)", [run.name for run in runs])]
    lines += [(row.title, [f"{run.p50(row.method) * 1000:.1f}" for run in runs]) for row in ROWS]
    lines += [
        ("/predict req/s", [f"{run.predict['throughput']:.1f}" for run in runs]),
        ("/predict p50 (ms)", [f"{run.predict['p50']:.1f}" for run in runs]),
        ("server CPU ms/request", [f"{run.cpu_per_request_s * 1000:.1f}" for run in runs]),
    ]
    print()
    for title, cells in lines:
        print(f"{title:<24}" + "".join(f"{cell:>{width}}" for cell in cells))


def main(args: argparse.Namespace) -> int:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    logging.getLogger("httpx").setLevel(logging.WARNING)
    if args.providers == CUDA and (reason := cuda_missing()):
        print(f"no CUDA on this machine: {reason}. Nothing was started.", file=sys.stderr)
        print(
            f"To check the script itself here: python bench/gpu_check.py --providers {CPU}",
            file=sys.stderr,
        )
        return NO_CUDA_EXIT
    # imported once CUDA is known to be here: "no CUDA" answers without loading the bench
    from bench_speed import measure_service

    faces = faces_for(args)
    reference = measure_service("cpu", ROOT, faces, args, ("--providers", "cpu"), OUT)
    name = SERVICE_PROVIDERS[args.providers]
    device = measure_service(f"{name}-under-test", ROOT, faces, args, ("--providers", name), OUT)
    print(f"\nreference: {reference.provider}; under test: {device.provider} ({device.commit})")
    failed = []
    if device.provider != args.providers:
        failed.append(f"the service under test runs on {device.provider}, not {args.providers}")
    failed += compare(reference, device, args.min_spearman)
    print_latency([reference, device])
    print("\n" + ("all checks passed" if not failed else "FAILED: " + "; ".join(failed)))
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main(get_args_parser().parse_args()))
