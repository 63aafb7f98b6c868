"""Old and new service side by side: every explanation method's latency in milliseconds and in
FP32 forward passes, /predict throughput and CPU per request, each next to its faithfulness or
accuracy check, in one run; the CPU's model and flags printed with it.

"Old" is the service of another checkout (``--old``, default /tmp/base27: the commit before
issue 27's work, made with ``git -C <repo> worktree add /tmp/base27 57aae98``); "new" is this
checkout. Each is started as the README starts it (``python -m service --port N``, nothing
else set: the new one's precision is its default, ``auto``), one after the other (never both at
once), and gets the same requests:

1. every explanation row, read from the new service's ``GET /explain``: gradient saliency,
   Grad-CAM, the one-pass method (``fastshap``) where it is listed, and occlusion, LIME, RISE,
   SmoothGrad and integrated gradients at their defaults, each twice (``stop=fixed`` and
   ``stop=converged``) where the method offers ``stop``. A service without a row's method has
   no figure for it; one without a row's parameter runs its default (the table lists the
   parameters each used). ``--requests`` test-split faces, one request at a time, a different
   photo each (the explanation cache never answers), after one warm-up request on a training
   face. Each face is sent to ``/predict`` once before the first row, as the page sends a photo
   to ``/predict`` before its panels: every row then finds the face search done alike (a
   service with a face search cache answers every row from it; one without searches in every
   row), where otherwise the first row alone would pay the search. p50 of the client's wall
   time, and that time in passes: the time of one image's FP32
   forward pass at batch 32 (raw ONNX Runtime, the service's default threads, this run). The two
   services' maps of the same face are compared (Spearman rank correlation).
2. faithfulness of every row: deletion AUC (``service/explain/faithfulness.py``) of the maps
   each service returns for ``--faith-n`` test faces resized to the model's input size and sent
   whole (``detect=false``: the map in the upload's coordinates is the map over the model
   input), judged by the bundle's FP32 ONNX model in this process, and its ratio to a random
   map's (seeded, the same per face for every row); the samples a sampling method used (the
   answer's ``samples``); LIME's seed-to-seed Spearman correlation (seeds s and s+1) on
   ``--stability-n`` of those faces.
3. ``/predict``: the label of every test face (accuracy, agreement old/new); then ``--clients``
   closed-loop keep-alive clients for ``--duration`` s (bench_predict's load generator), as a
   fraction of the raw batched ONNX throughput measured in this run with the service's
   default threads, and the server process's CPU seconds per request (psutil).

The precision each serves comes from its ``GET /model`` (the new one's reason and probe too).
Prints a markdown table with issue 27's goals (in passes), and writes JSON with ``--json``.

    python bench/bench_speed.py [--old /tmp/base27] [--requests 20] [--faith-n 20] [--json F]
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import json
import logging
import os
import shlex
import statistics
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import psutil
from _client import (
    ServiceClient,
    ServiceError,
    grid_values,
    model_sized_png,
    on_model_input,
    precision_of,
    rank_correlation,
    whole_upload_input,
)
from _common import DEFAULT_BUNDLE, ROOT, add_bundle_args, machine_load, split_items, spread
from bench_predict import load_level, multipart_request, raw_throughput

from service.bundle.format import ONNX_FILE, read_meta
from service.bundle.framing import Framing
from service.bundle.preprocess import Preprocessor
from service.explain.faithfulness import deletion_auc
from service.inference.engine import create_session
from service.inference.precision_probe import cpu_info

sys.path.insert(0, str(ROOT))
from tests.load.harness import free_port, start_server, stop_server  # noqa: E402

OUT = ROOT / "bench" / "results" / "speed"
BASE_COMMIT = "57aae98"
PASS_BATCH = 32  # the pass unit: one image of a batch of this size, FP32, raw ONNX Runtime
log = logging.getLogger("bench_speed")


@dataclasses.dataclass(frozen=True)
class ExplainRow:
    """One explanation row of the table: a method, the parameters the row fixes, its goal in
    passes (issue 27's, where it sets one)."""

    title: str
    method: str
    fixed: dict[str, Any]
    goal_passes: float | None = None

    @property
    def key(self) -> str:
        return self.method + "".join(f" {k}={v}" for k, v in sorted(self.fixed.items()))


# (method, title, goal in passes at its default): issue 27's "done when"
SAMPLED = (
    ("occlusion", "occlusion", 60.0),
    ("lime", "LIME", 160.0),
    ("rise", "RISE", None),
    ("smoothgrad", "SmoothGrad", None),
    ("integrated_gradients", "integrated gradients", None),
)
ONE_PASS = "fastshap"
ONE_PASS_RATIO_MARGIN = 0.05  # its deletion AUC / random at most LIME's + this


def explain_rows(offered: dict[str, dict[str, Any]]) -> list[ExplainRow]:
    """The rows for the methods ``offered`` (the new service's ``GET /explain``): a sampling
    method with ``stop`` gets a row for each rule, the default one carrying the goal."""
    rows = [
        ExplainRow("gradient saliency", "gradient", {}, 14.0),
        ExplainRow("Grad-CAM", "gradcam", {}),
    ]
    if ONE_PASS in offered:
        rows.append(ExplainRow("one-pass (fastshap)", ONE_PASS, {}, 3.0))
    for method, title, goal in SAMPLED:
        if method not in offered:
            continue
        if "stop" not in offered[method]:
            rows.append(ExplainRow(f"{title} (default)", method, {}, goal))
            continue
        default = offered[method]["stop"]
        for stop in ("fixed", "converged"):
            mark = " (default)" if stop == default else ""
            goal_here = goal if stop == default else None
            rows.append(ExplainRow(f"{title} stop={stop}{mark}", method, {"stop": stop}, goal_here))
    return rows


RATIO_GOAL = 0.45  # /predict throughput over raw batched ONNX
CPU_GOAL = 0.5  # new CPU seconds per /predict over old
AUC_TOLERANCE = 0.01
AGREEMENT_GOAL = 0.995


@dataclasses.dataclass
class Face:
    relative: str
    label: int
    photo: bytes


@dataclasses.dataclass
class ServiceRun:
    """Everything measured on one service; explanation figures by ``ExplainRow.key``."""

    name: str
    root: str
    commit: str
    precision: str
    int8_gates: Any
    provider: str
    runtime: dict[str, Any] = dataclasses.field(default_factory=dict)
    parameters: dict[str, dict[str, Any]] = dataclasses.field(default_factory=dict)
    used: dict[str, dict[str, Any]] = dataclasses.field(default_factory=dict)
    seconds: dict[str, list[float]] = dataclasses.field(default_factory=dict)
    maps: dict[str, list[np.ndarray]] = dataclasses.field(default_factory=dict)
    whole_maps: dict[str, list[np.ndarray]] = dataclasses.field(default_factory=dict)
    targets: dict[str, list[str]] = dataclasses.field(default_factory=dict)  # class ids
    samples: dict[str, list[tuple[int, int]]] = dataclasses.field(default_factory=dict)
    """(used, planned) per face, from the answers' ``samples``"""
    lime_stability: dict[str, list[float]] = dataclasses.field(default_factory=dict)
    refused: dict[str, str] = dataclasses.field(default_factory=dict)
    """rows whose method the service listed but refused, with its answer"""
    cached_answers: int = 0
    labels: list[str | None] = dataclasses.field(default_factory=list)
    predict: dict[str, float] = dataclasses.field(default_factory=dict)
    cpu_per_request_s: float = float("nan")
    load_before: str = ""
    load_after: str = ""

    def has(self, row: ExplainRow) -> bool:
        return row.key in self.seconds

    def p50(self, row: ExplainRow) -> float:
        return statistics.median(self.seconds[row.key])


def get_args_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    add_bundle_args(parser)
    parser.add_argument(
        "--old",
        type=Path,
        default=Path("/tmp/base27"),
        help=f"checkout of the old service (default: /tmp/base27, a worktree of {BASE_COMMIT})",
    )
    parser.add_argument(
        "--requests", type=int, default=20, help="timed requests per method (default: 20)"
    )
    parser.add_argument(
        "--faith-n",
        type=int,
        default=20,
        help="test faces for the deletion AUC of occlusion and LIME (default: 20; the "
        "issue's check: 50)",
    )
    parser.add_argument(
        "--stability-n",
        type=int,
        default=10,
        help="of those, faces for LIME's seed-to-seed correlation (default: 10)",
    )
    parser.add_argument(
        "--steps", type=int, default=20, help="deletion steps per curve (default: 20)"
    )
    parser.add_argument(
        "--clients", type=int, default=32, help="/predict concurrent clients (default: 32)"
    )
    parser.add_argument(
        "--duration", type=float, default=10.0, help="/predict load seconds (default: 10)"
    )
    parser.add_argument(
        "--warmup", type=float, default=2.0, help="unmeasured load seconds first (default: 2)"
    )
    parser.add_argument(
        "--raw-seconds", type=float, default=2.0, help="seconds per raw batch size (default: 2)"
    )
    parser.add_argument(
        "--batch-sizes",
        type=int,
        nargs="+",
        default=[16, 32, 64],
        help="raw ONNX batch sizes; the best counts (default: 16 32 64)",
    )
    parser.add_argument(
        "--accuracy-n",
        type=int,
        default=0,
        help="test faces for /predict's accuracy and agreement (default: 0 = all)",
    )
    parser.add_argument(
        "--new-options",
        default="",
        help="flags added to the new service's command, e.g. '--precision int8' to measure "
        "the INT8 graph (default: none, as the README starts it)",
    )
    parser.add_argument("--json", type=Path, help="also write every figure to this JSON file")
    return parser


# -- one service ---------------------------------------------------------------------------------


def commit_of(root: Path) -> str:
    result = subprocess.run(
        ["git", "-C", str(root), "log", "-1", "--format=%h %s"],
        capture_output=True,
        text=True,
        check=False,
    )
    dirty = subprocess.run(
        ["git", "-C", str(root), "status", "--porcelain", "--untracked-files=no"],
        capture_output=True,
        text=True,
        check=False,
    ).stdout.strip()
    return result.stdout.strip()[:60] + (" + uncommitted changes" if dirty else "")


def explain_params(row: ExplainRow, defaults: dict[str, Any]) -> dict[str, Any]:
    """The row's fixed parameters that the service offers (a service without one runs its
    default and the table says which parameters it used)."""
    return {name: value for name, value in row.fixed.items() if name in defaults}


def same_request(run: ServiceRun, row: ExplainRow, done: dict[str, ExplainRow]) -> str | None:
    """The key of an earlier row that sent ``run`` the same request (an old service without
    ``stop`` gets one request for both rules); its figures serve this row too."""
    params = explain_params(row, run.parameters[row.method])
    signature = row.method + json.dumps(params, sort_keys=True)
    earlier = done.get(signature)
    done.setdefault(signature, row)
    return None if earlier is None else earlier.key


def measure_explanations(
    client: ServiceClient, run: ServiceRun, rows: list[ExplainRow], faces: list[Face], warm: Face
) -> None:
    """Every row's method that ``run`` offers on ``faces``, one request at a time, after one on
    ``warm``, each face sent to ``/predict`` first (the page's order)."""
    done: dict[str, ExplainRow] = {}
    for face in faces:  # the page's /predict of the photo, before its panels
        client.predict(face.photo)
    for row in (row for row in rows if row.method in run.parameters):
        params = explain_params(row, run.parameters[row.method])
        run.used[row.key] = {**run.parameters[row.method], **params}
        if (earlier := same_request(run, row, done)) is not None:
            run.seconds[row.key], run.maps[row.key] = run.seconds[earlier], run.maps[earlier]
            continue
        try:
            client.explain(row.method, warm.photo, **params)
        except ServiceError as error:  # listed but refused (e.g. a bundle without its model)
            log.warning("%s: %s refused, no figures: %s", run.name, row.key, error)
            run.refused[row.key] = str(error)
            continue
        run.seconds[row.key], run.maps[row.key] = [], []
        for face in faces:
            seconds, answer = client.explain(row.method, face.photo, **params)
            run.seconds[row.key].append(seconds)
            run.maps[row.key].append(grid_values(answer))
            run.cached_answers += bool(answer["cached"])
        log.info("%s: %s p50 %.3f s", run.name, row.key, run.p50(row))


def measure_faithfulness(
    client: ServiceClient,
    run: ServiceRun,
    rows: list[ExplainRow],
    faces: list[Face],
    stability_n: int,
) -> None:
    """Maps of whole uploads (``detect=false``) for the deletion AUC, the samples each used,
    and LIME with the next seed on the first ``stability_n`` faces."""
    done: dict[str, ExplainRow] = {}
    for row in (row for row in rows if row.key in run.seconds):
        params = explain_params(row, run.parameters[row.method])
        if (earlier := same_request(run, row, done)) is not None:
            for figures in (run.whole_maps, run.targets, run.samples, run.lime_stability):
                if earlier in figures:
                    figures[row.key] = figures[earlier]
            continue
        run.whole_maps[row.key], run.targets[row.key], run.samples[row.key] = [], [], []
        for face in faces:
            _, answer = client.explain(row.method, face.photo, detect="false", **params)
            run.whole_maps[row.key].append(grid_values(answer))
            run.targets[row.key].append(answer["target"]["id"])
            if answer.get("samples"):
                used = answer["samples"]
                run.samples[row.key].append((int(used["used"]), int(used["planned"])))
            run.cached_answers += bool(answer["cached"])
        seed = run.parameters[row.method].get("seed")
        if row.method != "lime" or seed is None:
            continue  # no seed: the same map every time
        run.lime_stability[row.key] = []
        for face, first in zip(faces[:stability_n], run.whole_maps[row.key], strict=False):
            _, answer = client.explain(
                "lime", face.photo, detect="false", **{**params, "seed": seed + 1}
            )
            run.lime_stability[row.key].append(rank_correlation(first, grid_values(answer)))


def measure_predict(
    client: ServiceClient,
    run: ServiceRun,
    server: subprocess.Popen,
    port: int,
    faces: list[Face],
    load_faces: list[Face],
    args: argparse.Namespace,
) -> None:
    """Labels of ``faces`` one at a time, then the closed-loop load cycling ``load_faces``."""
    for face in faces:
        try:
            run.labels.append(client.predict(face.photo)["label"])
        except (ServiceError, httpx.HTTPError) as error:  # counted wrong, and said
            log.warning("%s: /predict of %s: %s", run.name, face.relative, error)
            run.labels.append(None)
    requests = [multipart_request(port, face.photo) for face in load_faces]
    process = psutil.Process(server.pid)
    before = process.cpu_times()
    result = asyncio.run(load_level(port, requests, args.clients, args.warmup, args.duration))
    if not result["throughput"]:
        log.warning("%s: no /predict answered inside the window; raise --duration", run.name)
    after = process.cpu_times()
    cpu = (after.user + after.system) - (before.user + before.system)
    # over every request of the level, warm-up included, as bench_predict counts it
    run.cpu_per_request_s = cpu / max(result["completed"], 1)
    run.predict = {key: float(value) for key, value in result.items()}


def measure_service(
    name: str,
    root: Path,
    faces: dict[str, Any],
    args: argparse.Namespace,
    rows: list[ExplainRow] | None = None,
    options: tuple[str, ...] = (),
    out: Path = OUT,
) -> tuple[ServiceRun, list[ExplainRow]]:
    """Start ``python -m service --port N [options]`` from ``root``, measure everything on
    it (faces: ``timed``, ``warm``, ``faith``, ``accuracy``, ``test``), stop it. ``rows``:
    None = the rows this service's ``GET /explain`` offers (returned, for the other one)."""
    out.mkdir(parents=True, exist_ok=True)
    load_before = machine_load({os.getpid()})
    port = free_port()
    print(f"{name}: python -m service --port {port} {' '.join(options)} (from {root})", flush=True)
    server = start_server(DEFAULT_BUNDLE, port, out / f"{name}-server.log", options, root=root)
    client = ServiceClient(f"http://127.0.0.1:{port}")
    try:
        model = client.model_info()
        precision, int8_gates = precision_of(model)
        provider = model["runtime"]["provider"]
        run = ServiceRun(name, str(root), commit_of(root), precision, int8_gates, provider)
        run.runtime = model["runtime"]
        run.parameters = client.method_parameters()
        rows = explain_rows(run.parameters) if rows is None else rows
        measure_explanations(client, run, rows, faces["timed"], faces["warm"])
        measure_faithfulness(client, run, rows, faces["faith"], args.stability_n)
        measure_predict(client, run, server, port, faces["accuracy"], faces["test"][:64], args)
        run.load_before = load_before
        run.load_after = machine_load({os.getpid(), server.pid})
    finally:
        client.close()
        stop_server(server)
    return run, rows


# -- judging and printing ------------------------------------------------------------------------


def deletion_aucs(
    maps: list[np.ndarray],
    targets: list[str],
    inputs: list[np.ndarray],
    forward: Callable[[np.ndarray], np.ndarray],
    class_ids: list[str],
    steps: int,
    framing: Framing | None,
) -> list[float]:
    """Deletion AUC of each whole-upload map over its model input ``(3, H, W)``, for the class
    the service explained (``framing``: the bundle's, see ``on_model_input``)."""
    size = (inputs[0].shape[2], inputs[0].shape[1])
    return [
        deletion_auc(
            forward, x, on_model_input(grid, size, framing), class_ids.index(target), steps=steps
        )
        for x, grid, target in zip(inputs, maps, targets, strict=True)
    ]


def random_aucs(
    inputs: list[np.ndarray],
    forward: Callable[[np.ndarray], np.ndarray],
    targets: list[str],
    class_ids: list[str],
    steps: int,
) -> list[float]:
    """Deletion AUC of a random map (seeded by the face's index) of each face, for the class
    the first row explained: the baseline of the ``÷ random`` ratios."""
    return [
        deletion_auc(
            forward,
            x,
            np.random.default_rng(index).random(x.shape[1:]),
            class_ids.index(target),
            steps=steps,
        )
        for index, (x, target) in enumerate(zip(inputs, targets, strict=True))
    ]


def mean(values: list[float]) -> float:
    return float(np.mean(values)) if values else float("nan")


def map_agreement(old: ServiceRun, new: ServiceRun, row: ExplainRow) -> str:
    rhos = [
        rank_correlation(a, b) if a.shape == b.shape else float("nan")
        for a, b in zip(old.maps[row.key], new.maps[row.key], strict=True)
    ]
    return f"maps new vs old: Spearman {mean(rhos):.3f} (min {min(rhos):.3f})"


def accuracy(run: ServiceRun, faces: list[Face], class_ids: list[str]) -> float:
    return mean(
        [
            float(label == class_ids[face.label])
            for label, face in zip(run.labels, faces, strict=True)
        ]
    )


def verdict(met: bool) -> str:
    return "yes" if met else "**no**"


@dataclasses.dataclass(frozen=True)
class Judged:
    """What the run's checks need besides the runs: deletion AUC per run and row key, the
    random maps' AUC, the pass unit."""

    aucs: dict[str, dict[str, list[float]]]
    random_auc: float
    pass_s: float

    def ratio(self, run: str, key: str) -> float:
        return mean(self.aucs[run].get(key, [])) / self.random_auc


def paired_sem(before: list[float], after: list[float]) -> str:
    """`` ± s.e.`` of the mean face-by-face difference (empty for fewer than two faces): how far
    the gate's Δ could move on other faces."""
    if len(before) < 2 or len(before) != len(after):
        return ""
    difference = np.subtract(after, before)
    return f" ± {difference.std(ddof=1) / np.sqrt(difference.size):.3f}"


def explain_checks(
    old: ServiceRun, new: ServiceRun, row: ExplainRow, judged: Judged, rows: list[ExplainRow]
) -> list[str]:
    checks = []
    after = mean(judged.aucs["new"].get(row.key, []))
    shown = f"deletion AUC {after:.3f} (÷ random {judged.ratio('new', row.key):.2f})"
    if old.has(row):
        before = mean(judged.aucs["old"][row.key])
        ok = abs(after - before) <= AUC_TOLERANCE
        shown = (
            f"deletion AUC {before:.3f} → {after:.3f} (Δ {after - before:+.3f}"
            f"{paired_sem(judged.aucs['old'][row.key], judged.aucs['new'][row.key])}, gate "
            f"±{AUC_TOLERANCE}: {'ok' if ok else 'FAILED'}; ÷ random "
            f"{judged.ratio('old', row.key):.2f} → {judged.ratio('new', row.key):.2f})"
        )
    checks.append(f"{shown}, n={len(judged.aucs['new'].get(row.key, []))}")
    if row.method == ONE_PASS:
        lime = next((r for r in rows if r.method == "lime" and r.goal_passes), None)
        if lime is not None:
            limit = judged.ratio("new", lime.key) + ONE_PASS_RATIO_MARGIN
            ok = judged.ratio("new", row.key) <= limit
            checks.append(
                f"÷ random at most LIME's + {ONE_PASS_RATIO_MARGIN} = {limit:.2f}: "
                f"{'ok' if ok else 'FAILED'}"
            )
    if new.samples.get(row.key):
        used = mean([float(u) for u, _ in new.samples[row.key]])
        planned = mean([float(p) for _, p in new.samples[row.key]])
        old_used = [float(u) for u, _ in old.samples.get(row.key, [])]
        checks.append(
            f"samples used {used:.0f} of {planned:.0f}"
            + (f" (old {mean(old_used):.0f})" if old_used else "")
        )
    if old.has(row):
        checks.append(map_agreement(old, new, row))
    if new.lime_stability.get(row.key):
        after = mean(new.lime_stability[row.key])
        before = mean(old.lime_stability.get(row.key, []))
        checks.append(
            f"seed-to-seed Spearman {before:.3f} → {after:.3f} "
            f"({'ok' if not after < before - 0.01 else 'WORSE'})"
        )
    return checks


def build_rows(
    old: ServiceRun,
    new: ServiceRun,
    rows: list[ExplainRow],
    judged: Judged,
    raw_best: float,
    faces: list[Face],
    class_ids: list[str],
    clients: int,
) -> list[dict[str, str]]:
    table = []
    for row in rows:
        if not new.has(row):
            refused = new.refused.get(row.key, "not offered")
            table.append(dict.fromkeys(TABLE_COLUMNS, "-") | {"request": row.title})
            table[-1]["checks"] = f"new service: {refused}"
            continue
        new_s = new.p50(row)
        old_s = old.p50(row) if old.has(row) else float("nan")
        new_passes, old_passes = new_s / judged.pass_s, old_s / judged.pass_s
        goal = row.goal_passes
        table.append(
            {
                "request": f"{row.title}, p50",
                "old": "-" if not old.has(row) else f"{old_s * 1000:.0f} ms",
                "new": f"{new_s * 1000:.0f} ms",
                "old passes": "-" if not old.has(row) else f"{old_passes:.1f}",
                "new passes": f"{new_passes:.1f}",
                "new/old": "-" if not old.has(row) else f"{new_s / old_s:.2f}",
                "goal": "-" if goal is None else f"≤ {goal:.0f} passes",
                "met": "-" if goal is None else verdict(new_passes <= goal),
                "checks": "; ".join(explain_checks(old, new, row, judged, rows)),
            }
        )
    old_ratio = old.predict["throughput"] / raw_best
    new_ratio = new.predict["throughput"] / raw_best
    agreement = mean([float(a == b) for a, b in zip(old.labels, new.labels, strict=True)])
    table.append(
        {
            "request": f"/predict, {clients} clients: req/s over raw ONNX ({raw_best:.0f} img/s)",
            "old": f"{old_ratio:.2f} ({old.predict['throughput']:.0f}/s)",
            "new": f"{new_ratio:.2f} ({new.predict['throughput']:.0f}/s)",
            "old passes": "-",
            "new passes": "-",
            "new/old": f"{new_ratio / old_ratio:.2f}",
            "goal": f"≥ {RATIO_GOAL}",
            "met": verdict(new_ratio >= RATIO_GOAL),
            "checks": f"test accuracy {accuracy(old, faces, class_ids):.4f} → "
            f"{accuracy(new, faces, class_ids):.4f}; "
            f"labels agree on {agreement:.1%} of {len(faces)} test faces "
            f"(gate ≥ {AGREEMENT_GOAL:.1%}: {'ok' if agreement >= AGREEMENT_GOAL else 'FAILED'}); "
            f"precision {old.precision} → {new.precision}; "
            f"p50 {old.predict['p50']:.0f} → {new.predict['p50']:.0f} ms",
        }
    )
    table.append(
        {
            "request": "/predict, server CPU per request",
            "old": f"{old.cpu_per_request_s * 1000:.1f} ms",
            "new": f"{new.cpu_per_request_s * 1000:.1f} ms",
            "old passes": "-",
            "new passes": "-",
            "new/old": f"{new.cpu_per_request_s / old.cpu_per_request_s:.2f}",
            "goal": f"≤ {CPU_GOAL} × old",
            "met": verdict(new.cpu_per_request_s <= CPU_GOAL * old.cpu_per_request_s),
            "checks": f"failed answers under load {old.predict['failures']:.0f} → "
            f"{new.predict['failures']:.0f}",
        }
    )
    return table


TABLE_COLUMNS = (
    "request",
    "old",
    "new",
    "old passes",
    "new passes",
    "new/old",
    "goal",
    "met",
    "checks",
)


def markdown(rows: list[dict[str, str]]) -> str:
    columns = list(rows[0])
    lines = ["| " + " | ".join(columns) + " |", "| " + " | ".join("---" for _ in columns) + " |"]
    lines += ["| " + " | ".join(row[column] for column in columns) + " |" for row in rows]
    return "\n".join(lines)


def parameter_lines(old: ServiceRun, new: ServiceRun, rows: list[ExplainRow]) -> list[str]:
    lines = []
    for row in rows:
        for run in (old, new):
            if row.key not in run.used:
                lines.append(f"- {run.name} {row.title}: not offered")
                continue
            shown = ", ".join(f"{k}={v}" for k, v in run.used[row.key].items()) or "-"
            lines.append(f"- {run.name} {row.title}: {shown}")
    return lines


def precision_lines(run: ServiceRun) -> list[str]:
    """What ``GET /model`` says about the precision that serves (older services say less)."""
    runtime = run.runtime
    lines = [
        f"{run.name}: {run.provider}, precision {run.precision}"
        + (f" (setting {runtime['precision_setting']})" if "precision_setting" in runtime else "")
        + f"; INT8 gates recorded in meta.json: {run.int8_gates or 'none'}"
    ]
    if "precision_reason" in runtime:
        lines.append(f"{run.name}: why: {runtime['precision_reason']}")
    if runtime.get("precision_probe"):
        probe = runtime["precision_probe"]
        lines.append(
            f"{run.name}: probe: FP32 {probe['fp32_ms']:.1f} ms, INT8 {probe['int8_ms']:.1f} ms "
            f"of CPU per batch of {probe['batch']} (best of {probe['rounds']}), ratio "
            f"{probe['ratio']:.2f}, margin {probe['margin']}"
        )
    if "twin_precision" in runtime:
        lines.append(
            f"{run.name}: twin {runtime['twin_precision']}: {runtime['twin_precision_reason']}"
        )
    return lines


# -- the run -------------------------------------------------------------------------------------


def load_faces(args: argparse.Namespace, input_size: tuple[int, int]) -> dict[str, Any]:
    """The test faces as files (``test``; ``timed`` and ``accuracy`` spread over them), the
    ``faith`` faces resized to the model's ``input_size`` (sent whole, each is its own model
    input), and a training face to warm up on."""
    test = [
        Face(relative, label, (args.data / "celebs8" / relative).read_bytes())
        for relative, label in split_items(args.model, "test")
    ]
    warm_relative, warm_label = split_items(args.model, "train")[0]
    warm = Face(warm_relative, warm_label, (args.data / "celebs8" / warm_relative).read_bytes())
    return {
        "test": test,
        "timed": spread(test, args.requests),
        "faith": [
            Face(
                f.relative, f.label, model_sized_png(args.data / "celebs8" / f.relative, input_size)
            )
            for f in spread(test, args.faith_n)
        ],
        "accuracy": spread(test, args.accuracy_n or len(test)),
        "warm": warm,
    }


def main(args: argparse.Namespace) -> None:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    logging.getLogger("httpx").setLevel(logging.WARNING)
    if not (args.old / "service").is_dir():
        raise SystemExit(
            f"no old checkout at {args.old}; make one (read-only, once) with:\n"
            f"  git -C {ROOT} worktree add {args.old} {BASE_COMMIT}"
        )
    if not (args.data / "celebs8").is_dir():
        raise SystemExit(f"no face data at {args.data / 'celebs8'}; pass --data")
    meta = read_meta(args.model)
    class_ids = [c.id for c in meta.classes]
    preprocess = Preprocessor(meta.input)
    faces = load_faces(args, preprocess.size)
    cpu = cpu_info()
    print(
        f"bundle {meta.name} {meta.version}; {len(faces['test'])} test faces; "
        f"{os.cpu_count()} cores; CPU {cpu.describe()}; {machine_load({os.getpid()})}",
        flush=True,
    )
    photos = [face.photo for face in faces["test"][:64]]
    raw_args = argparse.Namespace(model=args.model, threads=0, raw_seconds=args.raw_seconds)
    print("raw ONNX Runtime, FP32 model.onnx, threads as the service's default:", flush=True)
    raw = raw_throughput(raw_args, photos, sorted({*args.batch_sizes, PASS_BATCH}))
    raw_best = max(raw.values())

    new, rows = measure_service(
        "new", ROOT, faces, args, None, tuple(shlex.split(args.new_options))
    )
    old, _ = measure_service("old", args.old, faces, args, rows)
    print("raw ONNX Runtime again, after both services (the table uses the first):", flush=True)
    raw_after = raw_throughput(raw_args, photos, [PASS_BATCH])

    session = create_session(args.model / ONNX_FILE, "cpu", 0)

    def forward(batch: np.ndarray) -> np.ndarray:
        return session.run(["logits"], {"input": batch})[0]

    inputs = [whole_upload_input(face.photo, preprocess) for face in faces["faith"]]
    aucs = {
        run.name: {
            row.key: deletion_aucs(
                run.whole_maps[row.key],
                run.targets[row.key],
                inputs,
                forward,
                class_ids,
                args.steps,
                meta.input.framing,
            )
            for row in rows
            if row.key in run.whole_maps
        }
        for run in (old, new)
    }
    baseline = random_aucs(inputs, forward, new.targets[rows[0].key], class_ids, args.steps)
    judged = Judged(aucs, mean(baseline), 1 / raw[PASS_BATCH])
    table = build_rows(old, new, rows, judged, raw_best, faces["accuracy"], class_ids, args.clients)

    print(f"\nold: {old.root} ({old.commit})\nnew: {new.root} ({new.commit})")
    print(f"CPU: {cpu.describe()}")
    print(
        f"{args.requests} requests per explanation row, one at a time, a different test face "
        f"each, sent to /predict first (the page's order); a pass = one image of FP32 raw ONNX "
        f"at batch {PASS_BATCH} ({judged.pass_s * 1000:.2f} ms in this run); /predict: "
        f"{args.clients} clients for "
        f"{args.duration:.0f} s; deletion AUC on {len(inputs)} test faces sent whole at the "
        f"model's input size, judged by the FP32 ONNX model (a random map: "
        f"{judged.random_auc:.3f})\n"
    )
    print(markdown(table))
    print("\nparameters (from each service's GET /explain; the row's own fixed ones applied):")
    print("\n".join(parameter_lines(old, new, rows)))
    for run in (old, new):
        print("\n".join(precision_lines(run)))
        print(f"{run.name}: before: {run.load_before}\n{run.name}: after: {run.load_after}")
    print(
        f"raw ONNX best {raw_best:.0f} img/s before; batch {PASS_BATCH}: {raw[PASS_BATCH]:.0f} "
        f"before, {raw_after[PASS_BATCH]:.0f} after; cached answers: old {old.cached_answers}, "
        f"new {new.cached_answers} (should be 0)"
    )
    if args.json:
        figures = report(old, new, judged, cpu.describe(), raw, raw_after, table)
        args.json.write_text(json.dumps(figures, indent=2))
        print(f"wrote {args.json}")


def report(
    old: ServiceRun,
    new: ServiceRun,
    judged: Judged,
    cpu: str,
    raw: dict[int, float],
    raw_after: dict[int, float],
    table: list[dict[str, str]],
) -> dict[str, Any]:
    """Every figure of the run, for ``--json``."""

    def figures(run: ServiceRun) -> dict[str, Any]:
        return {
            "root": run.root,
            "commit": run.commit,
            "precision": run.precision,
            "runtime": run.runtime,
            "int8_gates": run.int8_gates,
            "parameters": run.parameters,
            "used": run.used,
            "seconds": run.seconds,
            "deletion_auc": judged.aucs[run.name],
            "samples_used": run.samples,
            "lime_seed_spearman": run.lime_stability,
            "predict": run.predict,
            "cpu_per_request_s": run.cpu_per_request_s,
            "labels": run.labels,
            "cached_answers": run.cached_answers,
            "load_before": run.load_before,
            "load_after": run.load_after,
        }

    return {
        "cpu": cpu,
        "pass_ms": judged.pass_s * 1000,
        "random_deletion_auc": judged.random_auc,
        "raw_images_per_s": raw,
        "raw_after_images_per_s": raw_after,
        "old": figures(old),
        "new": figures(new),
        "table": table,
    }


if __name__ == "__main__":
    main(get_args_parser().parse_args())
