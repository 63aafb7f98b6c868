"""``python -m training compare``: several bundles side by side, on the same faces.

Per bundle:

* test accuracy on its ``split.json`` test split, through its FP32 ONNX graph;
* the open-set score as the service computes it (``service.bundle.open_set.open_set_rule``,
  the bundle's threshold) on the test split against the held-out strangers that
  ``meta.json`` ``open_set.held_out.unknown_identities`` names under ``<data>/others``: AUROC
  and the false rejection / acceptance rates at the threshold (``training.open_set.rates``);
* ``/predict``: median and 90th-percentile latency and server CPU per request, on the service
  started as the README starts it (``training.serve_timing``);
* every explanation method (default: all but the one-pass ``fastshap``, which needs a fitted
  explainer most bundles lack) at its default parameters on ``--faces`` test faces, for the
  face's true class: deletion AUC (lower = more faithful) and insertion AUC (higher = more
  faithful) of ``service.explain.faithfulness``, ``--steps`` steps, in process (perturbation
  methods on the ONNX graph, gradient methods on the twin, as the service runs them).

Between bundles: the share of test faces on which they predict the same class, and per method
the mean Spearman rank correlation of their absolute maps of the same face (``map_correlation``:
both maps resized to the smaller model's input grid, since every bundle frames the same box of
the crop). The bundles must share the test split (the zoo's do: same data, same seed).

Writes a markdown report (``--out``), a PNG of test accuracy against cost (``--plot``) and the
figures as JSON (``--json``).
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import platform
import time
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime as ort
import torch
from PIL import Image
from scipy.stats import spearmanr
from tqdm import tqdm

from service.bundle.checks import load_gallery, load_twin
from service.bundle.format import EMBEDDING_OUTPUT, ONNX_FILE, BundleMeta, read_meta
from service.bundle.open_set import open_set_rule
from service.bundle.preprocess import Preprocessor
from service.explain import EXPLAINERS, ModelHandle
from service.explain.faithfulness import curve_auc
from training.open_set import rates
from training.preprocess import Preprocessing
from training.sanity import load_faces
from training.serve_timing import PredictCost, measure_predict

log = logging.getLogger(__name__)

DEFAULT_BUNDLES = ("models/celebs8", "models/celebs8-linear", "models/celebs8-scratch")


@dataclass
class BundleFigures:
    """What ``compare`` measured of one bundle."""

    name: str
    path: str
    parameters: int
    input_size: int
    test_accuracy: float
    test_images: int
    open_set: dict[str, Any] | None
    predict: PredictCost | None
    deletion: dict[str, float] = field(default_factory=dict)  # method -> mean AUC
    insertion: dict[str, float] = field(default_factory=dict)
    explain_s: dict[str, float] = field(default_factory=dict)  # method -> mean s per map


# ---- the math between models -------------------------------------------------------------


def agreement(logits_a: np.ndarray, logits_b: np.ndarray) -> float:
    """Share of rows (faces) on which two ``(N, C)`` logit arrays name the same class."""
    a, b = np.asarray(logits_a), np.asarray(logits_b)
    if a.shape[0] != b.shape[0] or a.shape[0] == 0:
        raise ValueError(f"need the same, non-zero number of faces: {a.shape} vs {b.shape}")
    return float((a.argmax(1) == b.argmax(1)).mean())


def resize_map(values: np.ndarray, size: int) -> np.ndarray:
    """An ``(H, W)`` map resampled to ``(size, size)`` (bilinear; PIL widens the filter when
    shrinking, so it averages rather than picks)."""
    image = Image.fromarray(np.asarray(values, dtype=np.float32), mode="F")
    return np.asarray(image.resize((size, size), Image.Resampling.BILINEAR), dtype=np.float64)


def map_correlation(a: np.ndarray, b: np.ndarray) -> float:
    """Spearman rank correlation of two maps' absolute values, each ``(H, W)`` in its model's
    input pixels over the same box of the face, compared on the smaller grid. NaN when either
    map is constant there (no ranking to compare)."""
    size = min(a.shape[0], a.shape[1], b.shape[0], b.shape[1])
    x = np.abs(resize_map(a, size)).ravel()
    y = np.abs(resize_map(b, size)).ravel()
    if np.ptp(x) == 0 or np.ptp(y) == 0:
        return float("nan")
    return float(spearmanr(x, y).statistic)


# ---- per bundle --------------------------------------------------------------------------


class Graph:
    """The bundle's FP32 ONNX graph: logits, and the embedding where the graph has one."""

    def __init__(self, bundle: Path, threads: int) -> None:
        options = ort.SessionOptions()
        options.intra_op_num_threads = threads
        options.inter_op_num_threads = 1
        self.session = ort.InferenceSession(
            str(bundle / ONNX_FILE), options, providers=["CPUExecutionProvider"]
        )
        names = [o.name for o in self.session.get_outputs()]
        self.outputs = ["logits"] + ([EMBEDDING_OUTPUT] if EMBEDDING_OUTPUT in names else [])

    def forward(self, batch: np.ndarray) -> np.ndarray:
        return np.asarray(self.session.run(["logits"], {"input": batch})[0])

    def rows(self, batch: np.ndarray, size: int = 64) -> tuple[np.ndarray, np.ndarray | None]:
        parts = [
            self.session.run(self.outputs, {"input": batch[i : i + size]})
            for i in range(0, len(batch), size)
        ]
        logits = np.concatenate([p[0] for p in parts])
        embedding = np.concatenate([p[1] for p in parts]) if len(self.outputs) > 1 else None
        return logits, embedding


def _inputs(prep: Preprocessing, root: Path, paths: list[str]) -> np.ndarray:
    """Model inputs ``(N, 3, H, W)`` float32 of the image files ``paths`` under ``root``."""
    images = torch.from_numpy(np.stack([prep.load(root / p) for p in paths])).permute(0, 3, 1, 2)
    return prep.standardise(images).numpy()


def evaluate(
    bundle: Path, meta: BundleMeta, graph: Graph, data: Path
) -> tuple[np.ndarray, np.ndarray, dict | None]:
    """(test logits, test labels, the open-set figures or None)."""
    split = json.loads((bundle / "split.json").read_text())["splits"]["test"]
    prep = Preprocessing.from_meta(meta.input.model_dump())
    logits, embedding = graph.rows(_inputs(prep, data / "celebs8", [p for p, _ in split]))
    labels = np.array([int(label) for _, label in split])
    rule = open_set_rule(meta, load_gallery(bundle, meta), None)
    if rule is None or meta.open_set is None:
        return logits, labels, None
    held_out = (meta.open_set.model_dump().get("held_out") or {}).get("unknown_identities", [])
    others = data / "others"
    strangers = [
        f"{who}/{p.name}"
        for who in held_out
        for p in sorted((others / who).iterdir())
        if p.suffix.lower() in {".png", ".jpg", ".jpeg", ".webp"}
    ]
    if not strangers:
        return logits, labels, None
    s_logits, s_embedding = graph.rows(_inputs(prep, others, strangers))

    def scores(lg: np.ndarray, emb: np.ndarray | None) -> np.ndarray:
        return np.array([rule(lg[i], None if emb is None else emb[i]) for i in range(len(lg))])

    figures = rates(scores(logits, embedding), scores(s_logits, s_embedding), rule.threshold)
    figures.update(score=rule.score, threshold=rule.threshold, strangers=held_out)
    return logits, labels, figures


def explain(
    handle: ModelHandle, faces: list, methods: list[str], steps: int, desc: str
) -> tuple[dict[str, list[np.ndarray]], dict[str, float], dict[str, float], dict[str, float]]:
    """Every method's map of every face (true class), with its deletion and insertion AUC.
    Returns (maps per method, mean deletion AUC, mean insertion AUC, mean seconds per map)."""
    maps: dict[str, list[np.ndarray]] = {m: [] for m in methods}
    deletion: dict[str, list[float]] = {m: [] for m in methods}
    insertion: dict[str, list[float]] = {m: [] for m in methods}
    seconds: dict[str, list[float]] = {m: [] for m in methods}
    for x, label, _ in tqdm(faces, desc=desc, leave=False):
        for method in methods:
            started = time.perf_counter()
            heatmap = EXPLAINERS[method](handle).attribute(x, target=label)
            seconds[method].append(time.perf_counter() - started)
            values = np.asarray(heatmap.values, dtype=np.float32)
            maps[method].append(values)
            deletion[method].append(
                curve_auc("deletion", handle.forward, x, values, label, steps=steps)
            )
            insertion[method].append(
                curve_auc("insertion", handle.forward, x, values, label, steps=steps)
            )

    def mean(d: dict[str, list[float]]) -> dict[str, float]:
        return {m: float(np.mean(v)) for m, v in d.items()}

    return maps, mean(deletion), mean(insertion), mean(seconds)


# ---- the report --------------------------------------------------------------------------


def _pct(value: float) -> str:
    return f"{100 * value:.1f} %"


def tables(
    figures: list[BundleFigures],
    pairs: list[dict[str, Any]],
    methods: list[str],
    faces: int,
    test_faces: int,
) -> str:
    """The markdown report's three tables."""
    lines = [
        "| bundle | parameters | input | test accuracy | open-set AUROC (held out) | "
        "FRR / FAR at threshold | /predict median (p90) | CPU per /predict |",
        "| --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for f in figures:
        o = f.open_set
        open_set = (
            (
                f"{o['auroc']:.3f}",
                f"{_pct(o['false_rejection_rate'])} / {_pct(o['false_acceptance_rate'])}",
            )
            if o
            else ("-", "-")
        )
        p = f.predict
        predict = (
            (f"{p.median_ms:.1f} ms ({p.p90_ms:.1f} ms)", f"{p.cpu_ms:.1f} ms") if p else ("-", "-")
        )
        lines.append(
            f"| {f.name} | {f.parameters / 1e6:.2f} M | {f.input_size} px | "
            f"{f.test_accuracy:.4f} ({f.test_images}) | {open_set[0]} | {open_set[1]} | "
            f"{predict[0]} | {predict[1]} |"
        )
    lines += [
        "",
        f"Explanations on {faces} test faces, true class, default parameters: deletion AUC "
        "(lower = more faithful) / insertion AUC (higher = more faithful); seconds per map.",
        "",
        "| method | " + " | ".join(f.name for f in figures) + " |",
        "| --- | " + " | ".join("---" for _ in figures) + " |",
    ]
    for m in methods:
        lines.append(
            f"| {m} | "
            + " | ".join(
                f"{f.deletion[m]:.3f} / {f.insertion[m]:.3f} ({f.explain_s[m]:.2f} s)"
                for f in figures
            )
            + " |"
        )
    lines += [
        "",
        f"Between models: the share of the {test_faces} test faces on which they predict the same "
        f"class, and the mean Spearman rank correlation of their absolute maps of the same "
        f"{faces} faces.",
        "",
        "| pair | same class | " + " | ".join(methods) + " |",
        "| --- | --- | " + " | ".join("---" for _ in methods) + " |",
    ]
    for pair in pairs:
        lines.append(
            f"| {pair['a']} vs {pair['b']} | {_pct(pair['agreement'])} | "
            + " | ".join(f"{pair['spearman'][m]:.2f}" for m in methods)
            + " |"
        )
    return "\n".join(lines)


def plot(figures: list[BundleFigures], path: Path) -> None:
    """Test accuracy against /predict latency and against parameters, one point per bundle."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(11, 4.2))
    panels = [
        ("median /predict latency (ms, the service on this CPU)", lambda f: f.predict.median_ms),
        ("parameters (millions)", lambda f: f.parameters / 1e6),
    ]
    for ax, (label, cost) in zip(axes, panels, strict=True):
        for i, f in enumerate(figures):
            if f.predict is None and "latency" in label:
                continue
            x = cost(f)
            ax.scatter([x], [f.test_accuracy], s=60)
            # alternate above and below: bundles of one backbone share a point on the right
            offset = (6, 4) if i % 2 == 0 else (6, -12)
            ax.annotate(f.name, (x, f.test_accuracy), textcoords="offset points", xytext=offset)
        ax.set_xlabel(label)
        ax.set_ylabel("test accuracy")
        ax.grid(alpha=0.3)
        ax.margins(x=0.25, y=0.15)
    axes[1].set_xscale("log")
    fig.suptitle("Accuracy against cost: transfer learning vs training from scratch")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=100)
    plt.close(fig)


def machine() -> str:
    """The CPU (as lscpu names it), its cores, and the load average: timings need them."""
    name = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            key, _, value = line.partition(":")
            if key.strip() == "model name":
                name = value.strip()
                break
    except OSError:
        pass
    load = " ".join(f"{v:.2f}" for v in os.getloadavg())
    return f"{name}, {os.cpu_count()} cores, load average {load}"


# ---- the command -------------------------------------------------------------------------


def compare(
    bundles: list[Path],
    data: Path,
    *,
    faces: int,
    requests: int,
    methods: list[str] | None,
    steps: int,
    threads: int,
    log_dir: Path,
) -> tuple[list[BundleFigures], list[dict[str, Any]], list[str], int]:
    """Measure ``bundles``; returns (figures per bundle, figures per pair, the methods, the
    number of test faces)."""
    if len(bundles) < 1:
        raise ValueError("compare needs at least one bundle")
    chosen = methods or [n for n, m in EXPLAINERS.items() if not m.needs_one_pass]
    unknown = [m for m in chosen if m not in EXPLAINERS]
    if unknown:
        raise ValueError(f"unknown method(s) {unknown}; choose from {', '.join(EXPLAINERS)}")
    splits = [json.loads((b / "split.json").read_text())["splits"]["test"] for b in bundles]
    if any(s != splits[0] for s in splits):
        raise ValueError("the bundles have different test splits: their faces are not the same")
    torch.set_num_threads(threads)
    figures, logits, maps = [], [], []
    for bundle in bundles:
        meta = read_meta(bundle)
        log.info("compare: %s", meta.name)
        graph = Graph(bundle, threads)
        test_logits, labels, open_set = evaluate(bundle, meta, graph, data)
        handle = ModelHandle(graph.forward, load_twin(bundle), meta.gradcam_layer)
        its_faces = load_faces(bundle, data / "celebs8", faces, Preprocessor(meta.input))
        its_maps, deletion, insertion, seconds = explain(
            handle, its_faces, chosen, steps, f"explain {meta.name}"
        )
        predict = None
        if requests:
            photos = [data / "celebs8" / p for p, _ in splits[0]]
            predict = measure_predict(bundle, photos, requests, log_dir)
            log.info("compare: %s /predict %s", meta.name, predict)
        figures.append(
            BundleFigures(
                name=meta.name,
                path=str(bundle),
                parameters=int(
                    meta.architecture.get("parameters")
                    or sum(int(p.numel()) for p in handle.twin.parameters())
                ),
                input_size=meta.input.height,
                test_accuracy=float((test_logits.argmax(1) == labels).mean()),
                test_images=len(labels),
                open_set=open_set,
                predict=predict,
                deletion=deletion,
                insertion=insertion,
                explain_s=seconds,
            )
        )
        logits.append(test_logits)
        maps.append(its_maps)
    pairs = []
    for i in range(len(bundles)):
        for j in range(i + 1, len(bundles)):
            pairs.append(
                {
                    "a": figures[i].name,
                    "b": figures[j].name,
                    "agreement": agreement(logits[i], logits[j]),
                    "spearman": {
                        m: float(
                            np.nanmean(
                                [
                                    map_correlation(a, b)
                                    for a, b in zip(maps[i][m], maps[j][m], strict=True)
                                ]
                            )
                        )
                        for m in chosen
                    },
                }
            )
    return figures, pairs, chosen, len(splits[0])


def compare_command(args: argparse.Namespace) -> int:
    started = time.perf_counter()
    before = machine()
    bundles = [Path(b) for b in args.bundles]
    figures, pairs, methods, test_faces = compare(
        bundles,
        Path(args.data),
        faces=args.faces,
        requests=args.requests,
        methods=[m.strip() for m in args.methods.split(",")] if args.methods else None,
        steps=args.steps,
        threads=args.threads,
        log_dir=Path(args.out).parent,
    )
    text = tables(figures, pairs, methods, args.faces, test_faces)
    wall = time.perf_counter() - started
    footer = (
        f"\n\n{datetime.now(UTC).date()}; {before} before, {machine()} after; {args.threads} "
        f"threads in process; {args.requests} /predict requests per bundle (after 3 warm-up "
        f"calls), one at a time; {wall:.0f} s in all."
    )
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(text + footer + "\n")
    plot(figures, Path(args.plot))
    if getattr(args, "json", None):
        Path(args.json).write_text(
            json.dumps(
                {"bundles": [asdict(f) for f in figures], "pairs": pairs}, indent=2, default=str
            )
            + "\n"
        )
    print(text + footer)
    print(f"\nwrote {out} and {args.plot}")
    return 0
