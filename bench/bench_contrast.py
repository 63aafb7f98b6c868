"""Contrastive and open-set maps: does each method's map explain the score it claims to?

The deletion protocol of ``service.explain.faithfulness`` on the score the map explains
(``service.explain.objective``), in its logit flavour, which does not saturate:

- contrast (``contrast=<class>``): the target is the predicted class, the contrast the
  runner-up (where the model hesitates); the score is logit(target) - logit(contrast). Deleting
  the map's top pixels must close that gap faster than deleting a random map's.
- open set (``target=open_set``): the score is the open-set score's log-odds (the bundle's
  fused score before its sigmoid). Deleting the map's top pixels must lower it faster than a
  random map's.

Pixels are deleted (set to model input 0, the quality report's deletion baseline) in
``--steps`` equal portions, most important first (``faithfulness.pixel_order``); the random map
is the quality report's (``quality.random_map``: uniform per pixel, seed 0). A logit score has
no floor, so on each face a map's curve and the random map's are measured above the lowest score
either reaches (``areas_above``); the
*deletion ratio* of a method is the mean of its faces' areas over the mean of the random map's
(below 1 beats random; the bar: below 0.7), beside the median of the per-face ratios and the
share of faces where the map's area is the smaller. The open-set deletion is also measured in the
score as served (``open_set.score``, the probability: the quality report's flavour), where a
stranger's score sits near 0 and only its rises show; the table gives the verdict both ways.

Faces: ``--n`` of the bundle's test split (spread over it) and ``--n`` held-out strangers (the
identities meta.json's ``open_set.held_out`` names, under ``<data>/others``), as model inputs
without face detection (the data are aligned crops, the service's ``detect=false``); every
method at its default parameters, in process on the bundle's FP32 ONNX model and its twin, as
the service runs them (``--threads`` threads).

    python bench/bench_contrast.py [--n 24] [--steps 16] [--threads 2] [--methods ...]
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from collections import defaultdict
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from _common import ROOT, add_bundle_args, cpu_model, machine_load, split_items, spread
from PIL import Image

sys.path.insert(0, str(ROOT))

from service.bundle.checks import load_gallery, load_twin  # noqa: E402
from service.bundle.format import EMBEDDING_OUTPUT, ONNX_FILE, BundleMeta, read_meta  # noqa: E402
from service.bundle.open_set import open_set_rule  # noqa: E402
from service.bundle.preprocess import Preprocessor  # noqa: E402
from service.explain import EXPLAINERS, ModelHandle  # noqa: E402
from service.explain.faithfulness import (  # noqa: E402
    DELETION_BASELINE,
    area_under,
    pixel_order,
    score_curve,
)
from service.explain.objective import Objective, Question, Score, resolve  # noqa: E402
from service.explain.perturb import baseline_image  # noqa: E402
from service.explain.quality import random_map  # noqa: E402
from service.faces.choice import choose_face  # noqa: E402
from service.faces.finder import FaceFinder  # noqa: E402
from service.inference.engine import create_session  # noqa: E402
from service.inference.model import explainable  # noqa: E402

KINDS = ("contrast", "open_set")
SERVED = "open_set served"
"""The open-set deletion in the served score (probability): reported beside the bar's."""
SETS = ("test", "strangers")
RANDOM = "random"
BAR = 0.7
BATCH = 32


def get_args_parser() -> argparse.ArgumentParser:
    parser = add_bundle_args(argparse.ArgumentParser(description=__doc__.split("\n\n")[0]))
    parser.add_argument("--n", type=int, default=24, help="faces per set (default: 24)")
    parser.add_argument("--steps", type=int, default=16, help="steps per curve (default: 16)")
    parser.add_argument("--threads", type=int, default=2, help="torch and ONNX threads")
    parser.add_argument("--methods", nargs="+", choices=list(EXPLAINERS), default=list(EXPLAINERS))
    return parser


@dataclass
class Areas:
    """One set's deletion areas: per method and kind, one per face, and the random map's
    beside it (``"<kind> random"``: above the pair's floor, face for face)."""

    areas: dict[tuple[str, str], list[float]]

    def ratio(self, method: str, kind: str) -> float:
        return float(np.mean(self.areas[method, kind]) / np.mean(self.random(method, kind)))

    def random(self, method: str, kind: str) -> np.ndarray:
        return np.asarray(self.areas[method, f"{kind} {RANDOM}"])

    def per_face(self, method: str, kind: str) -> np.ndarray:
        ours, random = np.asarray(self.areas[method, kind]), self.random(method, kind)
        return ours / np.where(np.abs(random) < 1e-9, np.nan, random)


def faces_of(args: argparse.Namespace, meta: BundleMeta, preprocess: Preprocessor) -> dict:
    """``--n`` model inputs per set (test-split faces, held-out strangers), each found and
    aligned as the service finds and aligns the face of an upload (``choose_face``): the
    gallery of the open-set score was made from faces aligned so."""
    known = [args.data / "celebs8" / rel for rel, _ in spread(split_items(args.model), args.n)]
    held_out = meta.open_set.held_out if meta.open_set else None
    ids = (held_out or {}).get("unknown_identities", []) if isinstance(held_out, dict) else []
    strangers = sorted(p for name in ids for p in (args.data / "others" / name).glob("*.png"))
    if not strangers:
        raise SystemExit("no held-out strangers: meta.json open_set.held_out names none found")
    model_input = aligned_input(meta, preprocess)
    paths = {"test": known, "strangers": spread(strangers, args.n)}
    return {name: [model_input(path) for path in items] for name, items in paths.items()}


def aligned_input(meta: BundleMeta, preprocess: Preprocessor) -> Callable[[Path], np.ndarray]:
    """A photo -> its model input, its face found and aligned as the service does it."""
    finder = FaceFinder(meta.face_alignment) if meta.face_alignment else None

    def model_input(path: Path) -> np.ndarray:
        image = Image.open(path).convert("RGB")
        choice = choose_face(finder, image, detect=True, index=None, framing=meta.input.framing)
        return preprocess(choice.aligned.crop)

    return model_input


def deletion_curve(
    objective: Objective,
    handle: ModelHandle,
    x: np.ndarray,
    values: np.ndarray,
    steps: int,
    score: Score = "logit",
) -> np.ndarray:
    """The score (``objective``'s, in flavour ``score``) as the pixels of map ``values`` are
    deleted, most important first: ``(steps + 1,)``, the photo's first, the fully deleted
    image's last."""
    scorer = objective.scorer(handle.forward, handle.rows, score)
    order = pixel_order(values, 0)
    deleted = baseline_image(x, DELETION_BASELINE)
    return score_curve(scorer, x, deleted, order, steps, BATCH)


def areas_above(curve: np.ndarray, random: np.ndarray) -> tuple[float, float]:
    """The two curves' areas above the lowest score either reaches on this face (a logit score
    has no floor of its own; one floor for the pair keeps their areas comparable, and the
    curve whose deletion drives the score lower and sooner gets the smaller area)."""
    floor = min(float(curve.min()), float(random.min()))
    return area_under(curve) - floor, area_under(random) - floor


def measure(handle: ModelHandle, faces: list[np.ndarray], methods: list[str], steps: int) -> Areas:
    areas: dict[tuple[str, str], list[float]] = defaultdict(list)
    for index, x in enumerate(faces):
        logits = handle.forward(x[None])[0]
        runner_up = int(np.argsort(logits)[-2])
        questions = {"contrast": Question(None, runner_up), "open_set": Question(open_set=True)}
        for kind, question in questions.items():
            objective = resolve(question, logits, handle.open_set)
            flavours: dict[str, Score] = {kind: "logit"}
            if kind == "open_set":
                flavours[SERVED] = "probability"
            random = {
                name: deletion_curve(objective, handle, x, random_map(x.shape[1:]), steps, score)
                for name, score in flavours.items()
            }
            for method in methods:
                heatmap = EXPLAINERS[method](handle).attribute(x, question)
                for name, score in flavours.items():
                    curve = deletion_curve(objective, handle, x, heatmap.values, steps, score)
                    ours, theirs = areas_above(curve, random[name])
                    areas[method, name].append(ours)
                    areas[method, f"{name} {RANDOM}"].append(theirs)
        print(f"  face {index + 1}/{len(faces)} done", file=sys.stderr, flush=True)
    return Areas(dict(areas))


def table(name: str, result: Areas, methods: list[str], n: int) -> str:
    lines = [
        f"### {name}: {n} faces",
        "",
        "| method | contrastive deletion ratio | median per face | beats random | "
        "open-set deletion ratio | median per face | beats random | both below "
        f"{BAR} | open-set ratio, served score | beats random | both below {BAR}, served |",
        "| --- | ---: | ---: | ---: | ---: | ---: | ---: | :---: | ---: | ---: | :---: |",
    ]
    for method in methods:
        cells, passed = [], True
        for kind in KINDS:
            ratio = result.ratio(method, kind)
            per_face = result.per_face(method, kind)
            ours = np.asarray(result.areas[method, kind])
            beats = float(np.mean(ours < result.random(method, kind)))
            cells += [f"{ratio:.3f}", f"{np.nanmedian(per_face):.3f}", f"{beats:.0%}"]
            passed = passed and ratio < BAR
        served = np.asarray(result.areas[method, SERVED])
        beats = float(np.mean(served < result.random(method, SERVED)))
        ratio = result.ratio(method, SERVED)
        both = result.ratio(method, "contrast") < BAR and ratio < BAR
        lines.append(
            f"| {method} | " + " | ".join(cells) + f" | {'yes' if passed else 'NO'} | "
            f"{ratio:.3f} | {beats:.0%} | {'yes' if both else 'NO'} |"
        )
    return "\n".join(lines)


def model_handle(bundle: Path, meta: BundleMeta, threads: int) -> ModelHandle:
    """The bundle's FP32 ONNX model (with its embedding) and twin, and its open-set score, as
    the service hands them to the methods (``explanations.model_handle``)."""
    session = create_session(bundle / ONNX_FILE, "cpu", threads)
    rule = open_set_rule(meta, load_gallery(bundle, meta), None)
    if rule is None:
        raise SystemExit(f"{bundle} has no open-set score to explain")

    def forward(batch: np.ndarray) -> np.ndarray:
        return np.asarray(session.run(["logits"], {"input": batch})[0])

    def rows(batch: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        logits, embedding = session.run(["logits", EMBEDDING_OUTPUT], {"input": batch})
        return np.asarray(logits), np.asarray(embedding)

    twin = load_twin(bundle)
    return ModelHandle(forward, twin, meta.gradcam_layer, rows=rows, open_set=explainable(rule))


def main(args: argparse.Namespace) -> None:
    torch.set_num_threads(args.threads)
    meta = read_meta(args.model)
    preprocess = Preprocessor(meta.input)
    handle = model_handle(args.model, meta, args.threads)
    faces = faces_of(args, meta, preprocess)
    print(
        f"bundle {meta.name} {meta.version}; FP32 ONNX Runtime and torch, {args.threads} "
        f"threads; {cpu_model()}, {os.cpu_count()} cores; {args.steps} steps per curve; "
        f"before: {machine_load({os.getpid()})}\n"
    )
    started = time.perf_counter()
    for name in SETS:
        result = measure(handle, faces[name], args.methods, args.steps)
        label = "test split (known faces)" if name == "test" else "held-out strangers"
        print(table(label, result, args.methods, len(faces[name])) + "\n", flush=True)
    print(
        f"{time.perf_counter() - started:.0f} s; after: {machine_load({os.getpid()})}",
        flush=True,
    )


if __name__ == "__main__":
    main(get_args_parser().parse_args())
