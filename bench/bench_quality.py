"""Grading a map: what the quality report costs per method, and whether its verdicts agree
with the offline faithfulness benchmark.

The quality report (``service.explain.quality``) grades a map by deletion and insertion against
a random map's curves, ``quality.STEPS`` steps each, and gives a verdict. Two sections, on
test-split faces of the bundle's split.json, every method at its default parameters, for the
predicted class, in process on the bundle's FP32 ONNX model (``--threads`` ONNX Runtime and
torch threads; gradient methods on the torch twin, as the service runs them):

1. ``cost``: per method, the map alone (``Explainer.attribute``), grading it as the FIRST map
   of its face (``quality.grade(..., random=None)``: the random map's curves computed too, what
   a single API call pays) and as a REPEAT (those curves passed in, what every other map of a
   cached face pays: the page grades all seven maps of one face). Medians over ``--faces``
   faces, the method order rotated face by face so that drift on a shared machine hits every
   method alike; the ratios are medians of the per-face ratios grading/map. A method's default
   (``Explainer.quality_by_default``) is meant for methods where grading adds at most about a
   third (``CHEAP_RATIO``); the table flags where the default disagrees, judged by the FIRST
   ratio. Then the same over HTTP for LIME: the service started as the README starts it
   (``python -m service`` on a free port), ``POST /explain/lime?format=json&detect=false``
   with ``quality=false`` and ``quality=true`` in turn, a fresh face each call (no cache
   answers): the median of the answer's ``timings``.
2. ``agreement``: on ``--n`` faces, each method's verdict shares, mean deletion and insertion
   ratios and mean gain (``quality.grade``, the face's random curves shared by its maps as the
   service shares them), beside the offline benchmark's deletion and insertion AUC of the same
   maps (``service.explain.faithfulness``, ``--steps`` steps, as bench_explain.py section 4)
   and of bench_explain's random map (uniform, ``default_rng(0)`` drawn face after face);
   whether the ranking by strong share (and by mean gain) agrees with the ranking by offline
   deletion AUC (Spearman over the methods); and the verdicts of two maps that should fail,
   for occlusion and LIME: the map inverted (``-values``) and its values shuffled over the
   pixels (``default_rng(1).permutation``), graded as ``POST /explain/evaluate`` grades a map
   from elsewhere (no method signals).

    python bench/bench_quality.py [--faces 10] [--http-faces 10] [--n 50] [--threads 2]
                                  [--only cost agreement]
"""

from __future__ import annotations

import argparse
import logging
import os
import statistics
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from _client import ServiceClient, model_sized_png
from _common import ROOT, add_bundle_args, cpu_model, machine_load, split_items, spread
from scipy.stats import rankdata, spearmanr

sys.path.insert(0, str(ROOT))

from service.bundle.checks import load_twin  # noqa: E402
from service.bundle.format import ONNX_FILE, read_meta  # noqa: E402
from service.bundle.preprocess import Preprocessor  # noqa: E402
from service.explain import EXPLAINERS, Explainer, Heatmap, ModelHandle  # noqa: E402
from service.explain import quality as quality_module  # noqa: E402
from service.explain.faithfulness import deletion_auc, insertion_auc  # noqa: E402
from service.explain.quality import (  # noqa: E402
    VERDICTS,
    QualityReport,
    RandomCurves,
)
from service.inference.engine import create_session  # noqa: E402
from tests.load.harness import free_port, start_server, stop_server  # noqa: E402
from training.sanity import Face, load_faces  # noqa: E402

SECTIONS = ("cost", "agreement")
CHEAP_RATIO = 0.35
"""'Adds at most about a third' (``Explainer.quality_by_default``), with a little slack."""
RANDOM = "random"
PROBED = ("occlusion", "lime")
HTTP_METHOD = "lime"

log = logging.getLogger("bench_quality")


def get_args_parser() -> argparse.ArgumentParser:
    parser = add_bundle_args(argparse.ArgumentParser(description=__doc__.split("\n\n")[0]))
    parser.add_argument(
        "--faces", type=int, default=10, help="test faces for the cost table (default: 10)"
    )
    parser.add_argument(
        "--http-faces",
        type=int,
        default=10,
        help="fresh faces per setting for the HTTP comparison, 0 to skip it (default: 10)",
    )
    parser.add_argument(
        "--n", type=int, default=50, help="test faces for the agreement table (default: 50)"
    )
    parser.add_argument(
        "--steps",
        type=int,
        default=20,
        help="steps per curve of the offline deletion/insertion AUC (default: 20)",
    )
    parser.add_argument(
        "--only",
        nargs="+",
        choices=SECTIONS,
        default=list(SECTIONS),
        help=f"sections to run (default: all: {' '.join(SECTIONS)})",
    )
    parser.add_argument(
        "--threads",
        type=int,
        default=2,
        help="torch and ONNX Runtime intra-op threads, in process (default: 2)",
    )
    parser.add_argument(
        "--ready-timeout",
        type=float,
        default=300.0,
        help="seconds to wait for the service's /readyz (default: 300)",
    )
    return parser


# -- grading as the service grades -------------------------------------------------------------


def grade_heatmap(
    handle: ModelHandle,
    x: np.ndarray,
    heatmap: Heatmap,
    method: type[Explainer],
    random: RandomCurves | None,
) -> tuple[QualityReport, RandomCurves]:
    """``heatmap``'s report as ``service.explanations.grade`` makes it
    (``quality.grade_heatmap``, with the method's completeness baseline for its parameters)."""
    baseline = method.completeness_baseline(x, method.Params.model_validate(heatmap.params))
    return quality_module.grade_heatmap(handle.forward, x, heatmap, baseline, random=random)


def rotated(names: Sequence[str], turn: int) -> list[str]:
    """``names`` started at position ``turn`` (modulo their count): face ``turn``'s order."""
    shift = turn % len(names)
    return [*names[shift:], *names[:shift]]


# -- 1. cost -----------------------------------------------------------------------------------


@dataclass
class CostRow:
    """One method's seconds per face: the map, its first grading and a repeat grading."""

    map: list[float] = field(default_factory=list)
    first: list[float] = field(default_factory=list)
    repeat: list[float] = field(default_factory=list)

    def ratio(self, grading: list[float]) -> float:
        """The median over faces of grading seconds over map seconds."""
        return statistics.median(g / m for g, m in zip(grading, self.map, strict=True))

    def measure(self, handle: ModelHandle, x: np.ndarray, method: type[Explainer]) -> None:
        """Time ``method``'s map of ``x``, then its grading as a face's first map and again as
        a repeat (the first grading's random curves passed in)."""
        started = time.perf_counter()
        heatmap = method(handle).attribute(x)
        mapped = time.perf_counter()
        _, random = grade_heatmap(handle, x, heatmap, method, None)
        first = time.perf_counter()
        grade_heatmap(handle, x, heatmap, method, random)
        repeat = time.perf_counter()
        self.map.append(mapped - started)
        self.first.append(first - mapped)
        self.repeat.append(repeat - first)


def cost_section(handle: ModelHandle, faces: list[Face], warm_up: Face) -> None:
    names = list(EXPLAINERS)
    rows = {name: CostRow() for name in names}
    for name in names:  # first calls: lazy initialisation, left out
        CostRow().measure(handle, warm_up[0], EXPLAINERS[name])
    started = time.perf_counter()
    for index, (x, _, _) in enumerate(faces):
        for name in rotated(names, index):
            rows[name].measure(handle, x, EXPLAINERS[name])
        if (index + 1) % 5 == 0 or index + 1 == len(faces):
            log.info(
                "cost: %d/%d faces, %.0f s", index + 1, len(faces), time.perf_counter() - started
            )
    print(
        f"\n1. What grading costs, in process, {len(faces)} test faces, every method at its "
        f"defaults; medians over faces (ratio: median of grading/map per face); grading: "
        f"{quality_module.STEPS} steps per curve, first = {quality_module.PASSES} passes "
        f"(random curves computed), repeat = {quality_module.REPEAT_PASSES} (passed in)"
    )
    print(
        f"{'method':<22}{'map ms':>9}{'+quality first ms (ratio)':>28}"
        f"{'+quality repeat ms (ratio)':>29}{'default on?':>13}  flag"
    )
    for name, row in rows.items():
        first, repeat = row.ratio(row.first), row.ratio(row.repeat)
        default = EXPLAINERS[name].quality_by_default
        print(
            f"{name:<22}{_ms(row.map):>9}{_ms(row.first):>19} ({first:>5.2f})"
            f"{_ms(row.repeat):>20} ({repeat:>5.2f}){'yes' if default else 'no':>13}  "
            f"{default_flag(default, first, repeat)}"
        )
    print(
        f"flag: judged by the FIRST ratio (what one API call pays) against {CHEAP_RATIO} "
        f"('adds at most about a third'); the repeat ratio is what the page's other maps pay"
    )
    print(f"elapsed: {time.perf_counter() - started:.0f} s")


def _ms(seconds: list[float]) -> str:
    return f"{statistics.median(seconds) * 1000:.0f}"


def default_flag(default: bool, first: float, repeat: float) -> str:
    """Whether the method's default agrees with its grading ratios: ``ok`` where it does by
    the first ratio, else what disagrees (and whether the repeat ratio would agree)."""
    cheap_first, cheap_repeat = first <= CHEAP_RATIO, repeat <= CHEAP_RATIO
    if default == cheap_first:
        return "ok"
    if default:
        return f"on, but first adds {first:.2f}" + (
            " (repeat within)" if cheap_repeat else " (repeat too)"
        )
    return f"off, though first adds only {first:.2f}"


@dataclass(frozen=True)
class HttpReading:
    """One ``POST /explain/{method}`` answer's timings (ms) and whether it was graded."""

    total_ms: float
    explain_ms: float
    quality_ms: float
    client_ms: float
    verdict: str | None


def http_section(args: argparse.Namespace, preprocess: Preprocessor) -> None:
    """LIME over HTTP with ``quality=false`` and ``quality=true``: a fresh face each call, the
    two settings alternating (and which goes first, pair by pair), after one call of each on
    faces of their own."""
    items = spread(split_items(args.model), 2 * args.http_faces + 2)
    photos = [
        model_sized_png(args.data / "celebs8" / relative, preprocess.size) for relative, _ in items
    ]
    port = free_port()
    readings: dict[bool, list[HttpReading]] = {False: [], True: []}
    with tempfile.TemporaryDirectory() as logs:
        print(f"\npython -m service on port {port} ...", flush=True)
        server = start_server(args.model, port, Path(logs) / "server.log", (), args.ready_timeout)
        client = ServiceClient(f"http://127.0.0.1:{port}")
        try:
            print(f"while the service was up: {machine_load({os.getpid(), server.pid})}")
            started = time.perf_counter()
            for index, photo in enumerate(photos):
                graded = (index % 2 == 1) != (index // 2 % 2 == 1)
                seconds, answer = client.explain(
                    HTTP_METHOD, photo, detect="false", quality=str(graded).lower()
                )
                timings = answer["timings"]
                reading = HttpReading(
                    timings["total_ms"],
                    timings["explain_ms"],
                    timings["quality_ms"],
                    seconds * 1000,
                    None if answer["quality"] is None else answer["quality"]["verdict"],
                )
                if answer["cached"] or (reading.verdict is None) == graded:
                    raise RuntimeError(f"call {index}: cached or not graded as asked: {answer}")
                if index >= 2:  # the first of each setting: warm-up
                    readings[graded].append(reading)
            elapsed = time.perf_counter() - started
        finally:
            client.close()
            stop_server(server)
    print(
        f"\n1b. POST /explain/{HTTP_METHOD}?format=json&detect=false over HTTP, "
        f"{args.http_faces} fresh test faces per setting (after one of each); medians, ms"
    )
    print(
        f"{'quality':<9}{'total_ms':>10}{'explain_ms':>12}{'quality_ms':>12}{'client ms':>11}"
        "  verdicts"
    )
    for graded, rows in readings.items():
        verdicts = Counter(row.verdict for row in rows if row.verdict is not None)
        print(
            f"{str(graded).lower():<9}"
            f"{statistics.median(r.total_ms for r in rows):>10.0f}"
            f"{statistics.median(r.explain_ms for r in rows):>12.0f}"
            f"{statistics.median(r.quality_ms for r in rows):>12.0f}"
            f"{statistics.median(r.client_ms for r in rows):>11.0f}"
            f"  {dict(verdicts) or '-'}"
        )
    plain = statistics.median(r.total_ms for r in readings[False])
    graded_total = statistics.median(r.total_ms for r in readings[True])
    per_call = statistics.median(r.quality_ms / r.explain_ms for r in readings[True])
    print(
        f"quality=true adds {graded_total / plain - 1:+.0%} to the median total_ms; "
        f"quality_ms/explain_ms per graded call, median: {per_call:.2f}; elapsed {elapsed:.0f} s"
    )


# -- 2. agreement ------------------------------------------------------------------------------


@dataclass
class AgreementRow:
    """One method's graded maps over the faces: verdicts, ratios, offline AUCs."""

    verdicts: Counter[str] = field(default_factory=Counter)
    deletion_ratios: list[float] = field(default_factory=list)
    insertion_ratios: list[float] = field(default_factory=list)
    gains: list[float] = field(default_factory=list)
    deletion_aucs: list[float] = field(default_factory=list)
    insertion_aucs: list[float] = field(default_factory=list)

    def add(self, report: QualityReport) -> None:
        self.verdicts[report.verdict] += 1
        if report.deletion_ratio is not None:
            self.deletion_ratios.append(report.deletion_ratio)
        if report.insertion_ratio is not None:
            self.insertion_ratios.append(report.insertion_ratio)
        if report.gain is not None:
            self.gains.append(report.gain)

    def share(self, verdict: str) -> float:
        """The share of ``verdict`` among the graded maps, in percent."""
        return 100.0 * self.verdicts[verdict] / max(1, sum(self.verdicts.values()))


def agreement_section(handle: ModelHandle, faces: list[Face], steps: int) -> None:
    random_maps = np.random.default_rng(0)  # bench_explain's: one generator, face after face
    rows = {name: AgreementRow() for name in [*EXPLAINERS, RANDOM]}
    probes = {(name, kind): AgreementRow() for name in PROBED for kind in ("inverted", "shuffled")}
    started = time.perf_counter()
    for index, (x, _, _) in enumerate(faces, 1):
        logits = np.asarray(handle.forward(x[None]), dtype=np.float32)[0]
        target = int(np.argmax(logits))
        random: RandomCurves | None = None
        maps: dict[str, np.ndarray] = {}
        for name, method in EXPLAINERS.items():
            heatmap = method(handle).attribute(x, target)
            report, random = grade_heatmap(handle, x, heatmap, method, random)
            rows[name].add(report)
            maps[name] = heatmap.values
        maps[RANDOM] = random_maps.random(x.shape[1:])
        assert random is not None
        rows[RANDOM].add(
            quality_module.grade(handle.forward, x, maps[RANDOM], target, logits, random=random)[0]
        )
        for name, values in maps.items():
            rows[name].deletion_aucs.append(
                deletion_auc(handle.forward, x, values, target, steps=steps)
            )
            rows[name].insertion_aucs.append(
                insertion_auc(handle.forward, x, values, target, steps=steps)
            )
        for (name, kind), row in probes.items():
            probe = failing_map(maps[name], kind)
            row.add(
                quality_module.grade(handle.forward, x, probe, target, logits, random=random)[0]
            )
        if index % 5 == 0 or index == len(faces):
            log.info(
                "agreement: %d/%d faces, %.0f s", index, len(faces), time.perf_counter() - started
            )
    print(
        f"\n2. Verdicts against the offline benchmark, {len(faces)} test faces, predicted class, "
        f"every method at its defaults; ratios: quality.grade ({quality_module.STEPS} steps, "
        f"mean over maps with a ratio); offline AUC: faithfulness, {steps} steps, mean ± sem "
        f"(deletion: lower is better; insertion: higher is better)"
    )
    print(_agreement_header("method"))
    for name, row in rows.items():
        print(_agreement_line(name, row))
    methods = list(EXPLAINERS)
    strong = [rows[name].share("strong") for name in methods]
    deletion = [float(np.mean(rows[name].deletion_aucs)) for name in methods]
    insertion = [float(np.mean(rows[name].insertion_aucs)) for name in methods]
    gains = [float(np.mean(rows[name].gains)) for name in methods]
    print(
        "\nrank by strong share (1 = most strong) against rank by offline deletion AUC "
        "(1 = lowest):"
    )
    for name, by_strong, by_deletion in zip(
        methods, descending_ranks(strong), descending_ranks([-d for d in deletion]), strict=True
    ):
        agrees = (
            "agrees" if by_strong == by_deletion else f"differs by {abs(by_strong - by_deletion):g}"
        )
        print(
            f"  {name:<22}strong rank {by_strong:>4g}   deletion rank {by_deletion:>4g}   {agrees}"
        )
    print(
        f"Spearman over the {len(methods)} methods: strong share vs offline deletion AUC "
        f"(lower = better) {spearman(strong, [-d for d in deletion]):+.2f}; "
        f"vs offline insertion AUC {spearman(strong, insertion):+.2f}; the curves alone "
        f"(the verdict weighs the method's own signals too), mean gain vs offline deletion AUC "
        f"{spearman(gains, [-d for d in deletion]):+.2f} (+1: the same order)"
    )
    print(
        "\nMaps that should fail, graded with no method signals (as /explain/evaluate grades "
        "a map from elsewhere), the face's random curves as above"
    )
    print(_agreement_header("map"))
    for (name, kind), row in probes.items():
        print(_agreement_line(f"{name} {kind}", row, offline=False))
    print(f"elapsed: {time.perf_counter() - started:.0f} s")


def failing_map(values: np.ndarray, kind: str) -> np.ndarray:
    """A map built to fail the test: ``inverted`` ranks the pixels the other way round;
    ``shuffled`` keeps the values but moves them to pixels drawn by ``default_rng(1)``."""
    if kind == "inverted":
        return -values
    if kind == "shuffled":
        return np.random.default_rng(1).permutation(values.ravel()).reshape(values.shape)
    raise ValueError(f"unknown kind {kind!r}; valid: inverted, shuffled")


def descending_ranks(values: Sequence[float]) -> list[float]:
    """1 for the largest of ``values``; ties share their mean rank."""
    return [float(rank) for rank in rankdata([-v for v in values])]


def spearman(first: Sequence[float], second: Sequence[float]) -> float:
    """Spearman rank correlation of two equally long sequences (ties: mean ranks)."""
    return float(spearmanr(first, second).statistic)


def _agreement_header(first: str) -> str:
    return (
        f"{first:<22}{'strong %':>9}{'weak %':>8}{'unrel. %':>9}{'mean del ratio':>16}"
        f"{'mean ins ratio':>16}{'mean gain':>11}{'offline del AUC':>17}{'offline ins AUC':>17}"
    )


def _agreement_line(name: str, row: AgreementRow, offline: bool = True) -> str:
    shares = "".join(
        f"{row.share(verdict):>{width}.0f}"
        for verdict, width in zip(VERDICTS, (9, 8, 9), strict=True)
    )
    aucs = (
        f"{_mean_sem(row.deletion_aucs):>17}{_mean_sem(row.insertion_aucs):>17}" if offline else ""
    )
    ratios = f"{_mean(row.deletion_ratios):>16}{_mean(row.insertion_ratios):>16}"
    return f"{name:<22}{shares}{ratios}{_mean(row.gains):>11}{aucs}"


def _mean(values: list[float]) -> str:
    return f"{np.mean(values):.3f}" if values else "n/a"


def _mean_sem(values: list[float]) -> str:
    array = np.asarray(values)
    sem = array.std(ddof=1) / np.sqrt(len(array)) if len(array) > 1 else 0.0
    return f"{array.mean():.3f} ± {sem:.3f}"


# -- main --------------------------------------------------------------------------------------


def main(args: argparse.Namespace) -> None:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    logging.getLogger("httpx").setLevel(logging.WARNING)  # one line per request otherwise
    torch.set_num_threads(args.threads)
    meta = read_meta(args.model)
    preprocess = Preprocessor(meta.input)
    session = create_session(args.model / ONNX_FILE, "cpu", args.threads)

    def forward(batch: np.ndarray) -> np.ndarray:
        return np.asarray(session.run(["logits"], {"input": batch})[0])

    handle = ModelHandle(forward, load_twin(args.model), meta.gradcam_layer)
    print(
        f"bundle {meta.name} {meta.version}; FP32 ONNX Runtime and torch, {args.threads} "
        f"threads; {cpu_model()}, {os.cpu_count()} cores; before: {machine_load({os.getpid()})}"
    )
    started = time.perf_counter()
    if "cost" in args.only:
        # one face more than asked: the warm-up's, kept out of the table
        faces = load_faces(args.model, args.data / "celebs8", args.faces + 1, preprocess)
        cost_section(handle, faces[1:], faces[0])
        if args.http_faces > 0:
            http_section(args, preprocess)
    if "agreement" in args.only:
        agreement_section(
            handle, load_faces(args.model, args.data / "celebs8", args.n, preprocess), args.steps
        )
    print(
        f"\nafter: {machine_load({os.getpid()})}; "
        f"total elapsed {time.perf_counter() - started:.0f} s"
    )


if __name__ == "__main__":
    main(get_args_parser().parse_args())
