"""Explanation methods: faithfulness, a sanity check, speed against common tools, latency.

One run prints four tables, all on test-split faces of the bundle's split.json:
1. latency of every method at default parameters on one face: p50 and p90 over ``--runs``;
2. speed against what users would otherwise run, on the same faces: captum's ``Occlusion`` with
   its defaults (one perturbation per forward pass, on the PyTorch twin) against our batched
   occlusion on ONNX Runtime, same window and stride; the ``lime`` package's ``lime_image`` with
   its defaults (quickshift, 1000 samples, batch size 10, top 5 labels) on the
   same ONNX model against our LIME, at its default and at 1000 samples;
3. the cascading model-parameter randomisation test (Adebayo et al. 2018) of every method on
   ``--sanity-images`` faces: ``training/sanity.py``, the same code as
   ``python -m training sanity``, which stores the figures in the bundle (docs/training.md);
4. deletion and insertion AUC (Petsiuk et al. 2018) of every method at its default parameters
   and of a random heatmap, averaged over ``--n`` faces (deletion: lower is better; insertion:
   higher is better), each for the predicted class.

    python bench/bench_explain.py [--n 50] [--threads 2] [--runs 20] [--speed-images 5]
"""

from __future__ import annotations

import argparse
import logging
import os
import statistics
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
from _common import add_bundle_args
from PIL import Image

from service.bundle.checks import load_twin
from service.bundle.format import ONNX_FILE, read_meta
from service.bundle.preprocess import Preprocessor
from service.common.cancellation import Cancellation
from service.common.softmax import softmax
from service.common.twin import LogitsOnly
from service.explain import EXPLAINERS, ModelHandle
from service.explain.faithfulness import deletion_auc, insertion_auc
from service.inference.engine import create_session
from training.sanity import Face, run_sanity, table
from training.sanity import load_faces as load_class_faces

RANDOM = "random"
SECTIONS = ("latency", "speed", "sanity", "faithfulness")

log = logging.getLogger("bench_explain")


def get_args_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    add_bundle_args(parser)
    parser.add_argument(
        "--n", type=int, default=50, help="test faces for the AUC table (default: 50)"
    )
    parser.add_argument(
        "--steps", type=int, default=20, help="deletion/insertion steps per curve (default: 20)"
    )
    parser.add_argument(
        "--sanity-images",
        type=int,
        default=10,
        help="faces for the cascading randomisation test (default: 10)",
    )
    parser.add_argument(
        "--speed-images", type=int, default=5, help="faces for the speed comparison (default: 5)"
    )
    parser.add_argument(
        "--runs", type=int, default=20, help="timed runs per method for latency (default: 20)"
    )
    parser.add_argument(
        "--only",
        nargs="+",
        choices=SECTIONS,
        default=list(SECTIONS),
        help=f"tables to print (default: all: {' '.join(SECTIONS)})",
    )
    parser.add_argument(
        "--threads",
        type=int,
        default=2,
        help="torch and ONNX Runtime intra-op threads (default: 2)",
    )
    parser.add_argument(
        "--methods",
        nargs="+",
        choices=list(EXPLAINERS),
        default=list(EXPLAINERS),
        help="methods of the faithfulness table (default: every one the bench can run; "
        "fastshap needs the bundle's one-pass explainer, which it does not load)",
    )
    return parser


def load_faces(bundle: Path, data: Path, count: int, preprocess: Preprocessor) -> list[Face]:
    """``count`` test faces spread over the split, from the data root ``data`` (with
    ``celebs8/``): ``training.sanity.load_faces``, for the benches that take ``--data``."""
    return load_class_faces(bundle, data / "celebs8", count, preprocess)


def timed(function: Callable[[], object]) -> float:
    started = time.perf_counter()
    function()
    return time.perf_counter() - started


def runnable(handle: ModelHandle, names: list[str]) -> list[str]:
    """``names`` less the methods ``handle`` cannot run (a one-pass explainer the bench does
    not load), each said in the log."""
    kept = []
    for name in names:
        try:
            EXPLAINERS[name](handle)
        except ValueError as exc:
            log.warning("%s left out: %s", name, exc)
        else:
            kept.append(name)
    return kept


def faithfulness_table(handle: ModelHandle, faces, steps: int, methods: list[str]) -> None:
    rng = np.random.default_rng(0)
    methods = runnable(handle, methods)
    rows: dict[str, dict[str, list[float]]] = {
        name: {"deletion": [], "insertion": [], "seconds": []} for name in [*methods, RANDOM]
    }
    for index, (x, _, _) in enumerate(faces, 1):
        target = int(np.argmax(handle.forward(x[None])[0]))
        maps = {}
        for name in methods:
            explainer = EXPLAINERS[name](handle)
            started = time.perf_counter()
            maps[name] = explainer.attribute(x, target).values
            rows[name]["seconds"].append(time.perf_counter() - started)
        maps[RANDOM] = rng.random(x.shape[1:])
        for name, values in maps.items():
            rows[name]["deletion"].append(
                deletion_auc(handle.forward, x, values, target, steps=steps)
            )
            rows[name]["insertion"].append(
                insertion_auc(handle.forward, x, values, target, steps=steps)
            )
        log.info("faithfulness: %d/%d faces", index, len(faces))
    print(
        f"\n4. Faithfulness on {len(faces)} test faces, predicted class, {steps} steps "
        "(deletion: lower is better; insertion: higher is better)"
    )
    print(f"{'method':<22}{'deletion AUC':>18}{'insertion AUC':>18}{'mean time (s)':>15}")
    for name, row in rows.items():
        deletion, insertion = np.array(row["deletion"]), np.array(row["insertion"])
        seconds = f"{np.mean(row['seconds']):.3f}" if row["seconds"] else "-"
        print(f"{name:<22}{_mean_sem(deletion):>18}{_mean_sem(insertion):>18}{seconds:>15}")


def _mean_sem(values: np.ndarray) -> str:
    sem = values.std(ddof=1) / np.sqrt(len(values)) if len(values) > 1 else 0.0
    return f"{values.mean():.3f} ± {sem:.3f}"


def sanity_section(bundle: Path, images: Path, count: int) -> None:
    spec = run_sanity(bundle, images, count)
    print(
        f"\n3. Cascading model-parameter randomisation, {spec.faces} faces, true class: mean "
        f"Spearman of |map| trained vs randomised per stage (top first, cumulative); a method "
        f"passes below {spec.pass_below} at every stage"
    )
    print(table(spec))


def speed_table(handle: ModelHandle, preprocess: Preprocessor, faces) -> None:
    from captum.attr import Occlusion as CaptumOcclusion
    from lime import lime_image

    occlusion = EXPLAINERS["occlusion"].Params()
    lime_defaults = EXPLAINERS["lime"].Params()
    captum = CaptumOcclusion(LogitsOnly(handle.twin, Cancellation()))

    def captum_occlusion(x: np.ndarray, target: int) -> None:
        with torch.no_grad():
            captum.attribute(
                torch.from_numpy(x[None]),
                sliding_window_shapes=(3, occlusion.window, occlusion.window),
                strides=(3, occlusion.stride, occlusion.stride),
                target=target,
            )

    def classifier_fn(images: np.ndarray) -> np.ndarray:
        batch = np.stack([preprocess(Image.fromarray(image.astype(np.uint8))) for image in images])
        return softmax(handle.forward(batch))

    def lime_package(photo: Image.Image) -> None:
        lime_image.LimeImageExplainer(random_state=0).explain_instance(
            np.asarray(photo), classifier_fn, random_seed=0
        )

    occlusion_ours, lime_ours = EXPLAINERS["occlusion"](handle), EXPLAINERS["lime"](handle)
    captum_seconds = mean_seconds(lambda x, target, photo: captum_occlusion(x, target), faces)
    lime_package_seconds = mean_seconds(lambda x, target, photo: lime_package(photo), faces)
    rows = [
        (
            "occlusion",
            "captum Occlusion, 1 per pass, twin",
            captum_seconds,
            f"ours, batch {occlusion.batch_size}, ONNX",
            mean_seconds(lambda x, target, photo: occlusion_ours.attribute(x, target), faces),
        ),
        (
            "lime",
            "lime_image defaults (1000, batch 10)",
            lime_package_seconds,
            f"ours, defaults ({lime_defaults.num_samples})",
            mean_seconds(lambda x, target, photo: lime_ours.attribute(x, target), faces),
        ),
        (
            "lime",
            "lime_image defaults (1000, batch 10)",
            lime_package_seconds,
            "ours, 1000 samples",
            mean_seconds(
                lambda x, target, photo: lime_ours.attribute(x, target, num_samples=1000), faces
            ),
        ),
    ]
    print(f"\n2. Speed against common tools, same {len(faces)} faces, seconds per face (mean)")
    print(f"{'method':<11}{'theirs':<38}{'s':>8}  {'ours':<26}{'s':>8}{'speed-up':>10}")
    for method, their_name, theirs, our_name, ours in rows:
        print(
            f"{method:<11}{their_name:<38}{theirs:>8.3f}  {our_name:<26}{ours:>8.3f}"
            f"{theirs / ours:>9.1f}x"
        )


def mean_seconds(explain: Callable[[np.ndarray, int, Image.Image], object], faces) -> float:
    """Mean seconds of ``explain(x, label, photo)`` over ``faces``, after one warm-up call."""
    explain(*faces[0])
    return float(np.mean([timed(lambda face=face: explain(*face)) for face in faces]))


def latency_table(handle: ModelHandle, face, runs: int) -> None:
    x = face[0]
    print(
        f"\n1. Latency at default parameters, one {x.shape[2]}x{x.shape[1]} model input, "
        f"{runs} runs after one warm-up"
    )
    print(f"{'method':<22}{'p50 (s)':>10}{'p90 (s)':>10}  parameters")
    for name, method in EXPLAINERS.items():
        explainer = method(handle)
        explainer.attribute(x)
        seconds = sorted(timed(lambda e=explainer: e.attribute(x)) for _ in range(runs))
        p90 = seconds[min(len(seconds) - 1, int(round(0.9 * (len(seconds) - 1))))]
        params = ", ".join(f"{k}={v}" for k, v in method.Params().model_dump().items()) or "-"
        print(f"{name:<22}{statistics.median(seconds):>10.3f}{p90:>10.3f}  {params}")


def main(args: argparse.Namespace) -> None:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    torch.set_num_threads(args.threads)
    meta = read_meta(args.model)
    preprocess = Preprocessor(meta.input)
    session = create_session(args.model / ONNX_FILE, "cpu", args.threads)

    def forward(batch: np.ndarray) -> np.ndarray:
        return session.run(["logits"], {"input": batch})[0]

    handle = ModelHandle(forward, load_twin(args.model), meta.gradcam_layer)
    # the sanity section reads its own faces (training/sanity.py); the others share these
    wanted = {"latency": 1, "speed": args.speed_images, "faithfulness": args.n}
    count = max((n for section, n in wanted.items() if section in args.only), default=0)
    faces = load_faces(args.model, args.data, count, preprocess) if count else []
    print(
        f"bundle {meta.name} {meta.version} ({args.model}); torch and ONNX Runtime threads: "
        f"{args.threads}; {os.cpu_count()} cores; OMP_WAIT_POLICY="
        f"{os.environ.get('OMP_WAIT_POLICY', 'unset')}; load average {os.getloadavg()[0]:.1f}"
    )
    if "latency" in args.only:
        latency_table(handle, faces[0], args.runs)
    if "speed" in args.only:
        speed_table(handle, preprocess, faces[: args.speed_images])
    if "sanity" in args.only:
        sanity_section(args.model, args.data / "celebs8", args.sanity_images)
    if "faithfulness" in args.only:
        faithfulness_table(handle, faces[: args.n], args.steps, args.methods)


if __name__ == "__main__":
    main(get_args_parser().parse_args())
