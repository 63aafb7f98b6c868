"""Old and new service side by side: explanation latency, /predict throughput and CPU per
request, each next to its faithfulness or accuracy check, in one run.

"Old" is the service of another checkout (``--old``, default /tmp/base: the commit before the
speed work, made with ``git -C <repo> worktree add /tmp/base cd6f1e2``); "new" is this
checkout. Each is started as the README starts it (``python -m service --port N``, nothing
else set), one after the other (never both at once), and gets the same requests:

1. every explanation row (gradient saliency, Grad-CAM, occlusion 24/12, LIME at its defaults):
   ``--requests`` test-split faces of the bundle's split.json, one request at a time, a
   different photo each (the explanation cache never answers), after one warm-up request on a
   training face; p50 of the client's wall time. The two services' maps of the same face are
   compared (Spearman rank correlation).
2. faithfulness of occlusion and LIME: deletion AUC (``service/explain/faithfulness.py``) of the
   maps each service returns for ``--faith-n`` test faces resized to the model's input size
   and sent whole (``detect=false``: the upload is the model input, and the map in its
   coordinates is the map over the model input, pixel for pixel), judged by the
   bundle's FP32 ONNX model in this process; LIME's seed-to-seed stability: Spearman
   correlation of maps with seeds s and s+1 on ``--stability-n`` of those faces.
3. ``/predict``: the label of every test face (accuracy, agreement old/new); then ``--clients``
   closed-loop keep-alive clients for ``--duration`` s (bench_predict's load generator), as a
   fraction of the raw batched ONNX throughput measured in this run with the service's
   default threads, and the server process's CPU seconds per request (psutil).

Parameters are read from each service's ``GET /explain``; the precision each serves from its
``GET /model``. Prints a markdown table with the issue's goals, and writes JSON with ``--json``.

    python bench/bench_speed.py [--old /tmp/base] [--requests 20] [--faith-n 20] [--json F]
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

sys.path.insert(0, str(ROOT))
from tests.load.harness import free_port, start_server, stop_server  # noqa: E402

OUT = ROOT / "bench" / "results" / "speed"
BASE_COMMIT = "cd6f1e2"
log = logging.getLogger("bench_speed")


@dataclasses.dataclass(frozen=True)
class ExplainRow:
    """One explanation row of the table: a method, the parameters the row fixes, its goal."""

    title: str
    method: str
    fixed: dict[str, Any]
    goal_s: float
    faithfulness: bool = False


ROWS = (
    ExplainRow("gradient saliency", "gradient", {}, 0.030),
    ExplainRow("Grad-CAM", "gradcam", {}, 0.025),
    ExplainRow("occlusion (24/12)", "occlusion", {"window": 24, "stride": 12}, 0.15, True),
    ExplainRow("LIME (default)", "lime", {}, 0.35, True),
)
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
    """Everything measured on one service."""

    name: str
    root: str
    commit: str
    precision: str
    int8_gates: Any
    provider: str
    parameters: dict[str, dict[str, Any]] = dataclasses.field(default_factory=dict)
    seconds: dict[str, list[float]] = dataclasses.field(default_factory=dict)
    maps: dict[str, list[np.ndarray]] = dataclasses.field(default_factory=dict)
    whole_maps: dict[str, list[np.ndarray]] = dataclasses.field(default_factory=dict)
    targets: dict[str, list[str]] = dataclasses.field(default_factory=dict)  # class ids
    lime_stability: list[float] = dataclasses.field(default_factory=list)
    cached_answers: int = 0
    labels: list[str | None] = dataclasses.field(default_factory=list)
    predict: dict[str, float] = dataclasses.field(default_factory=dict)
    cpu_per_request_s: float = float("nan")
    load_before: str = ""
    load_after: str = ""

    def p50(self, method: str) -> float:
        return statistics.median(self.seconds[method])


def get_args_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    add_bundle_args(parser)
    parser.add_argument(
        "--old",
        type=Path,
        default=Path("/tmp/base"),
        help=f"checkout of the old service (default: /tmp/base, a worktree of {BASE_COMMIT})",
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


def measure_explanations(
    client: ServiceClient, run: ServiceRun, faces: list[Face], warm: Face
) -> None:
    """Every row's method on ``faces``, one request at a time, after one on ``warm``."""
    for row in ROWS:
        params = explain_params(row, run.parameters[row.method])
        client.explain(row.method, warm.photo, **params)
        run.seconds[row.method], run.maps[row.method] = [], []
        for face in faces:
            seconds, answer = client.explain(row.method, face.photo, **params)
            run.seconds[row.method].append(seconds)
            run.maps[row.method].append(grid_values(answer))
            run.cached_answers += bool(answer["cached"])
        log.info("%s: %s p50 %.3f s", run.name, row.method, run.p50(row.method))


def measure_faithfulness(
    client: ServiceClient, run: ServiceRun, faces: list[Face], stability_n: int
) -> None:
    """Maps of whole uploads (``detect=false``) for the deletion AUC, and LIME with the next
    seed on the first ``stability_n`` faces."""
    for row in (row for row in ROWS if row.faithfulness):
        params = explain_params(row, run.parameters[row.method])
        run.whole_maps[row.method], run.targets[row.method] = [], []
        for face in faces:
            _, answer = client.explain(row.method, face.photo, detect="false", **params)
            run.whole_maps[row.method].append(grid_values(answer))
            run.targets[row.method].append(answer["target"]["id"])
            run.cached_answers += bool(answer["cached"])
    seed = run.parameters["lime"].get("seed")
    if seed is None:
        return  # no seed: the same map every time
    for face, first in zip(faces[:stability_n], run.whole_maps["lime"], strict=False):
        _, answer = client.explain("lime", face.photo, detect="false", seed=seed + 1)
        run.lime_stability.append(rank_correlation(first, grid_values(answer)))


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
    options: tuple[str, ...] = (),
    out: Path = OUT,
) -> ServiceRun:
    """Start ``python -m service --port N [options]`` from ``root``, measure everything on
    it (faces: ``timed``, ``warm``, ``faith``, ``accuracy``, ``test``), stop it."""
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
        run.parameters = client.method_parameters()
        measure_explanations(client, run, faces["timed"], faces["warm"])
        measure_faithfulness(client, run, faces["faith"], args.stability_n)
        measure_predict(client, run, server, port, faces["accuracy"], faces["test"][:64], args)
        run.load_before = load_before
        run.load_after = machine_load({os.getpid(), server.pid})
    finally:
        client.close()
        stop_server(server)
    return run


# -- judging and printing ------------------------------------------------------------------------


def deletion_aucs(
    run: ServiceRun,
    method: str,
    inputs: list[np.ndarray],
    forward: Callable[[np.ndarray], np.ndarray],
    class_ids: list[str],
    steps: int,
    framing: Framing | None,
) -> list[float]:
    """Deletion AUC of each whole-upload map of ``method`` over its model input ``(3, H, W)``,
    for the class the service explained (``framing``: the bundle's, see ``on_model_input``)."""
    size = (inputs[0].shape[2], inputs[0].shape[1])
    return [
        deletion_auc(
            forward, x, on_model_input(grid, size, framing), class_ids.index(target), steps=steps
        )
        for x, grid, target in zip(inputs, run.whole_maps[method], run.targets[method], strict=True)
    ]


def mean(values: list[float]) -> float:
    return float(np.mean(values)) if values else float("nan")


def map_agreement(old: ServiceRun, new: ServiceRun, method: str) -> str:
    rhos = [
        rank_correlation(a, b) if a.shape == b.shape else float("nan")
        for a, b in zip(old.maps[method], new.maps[method], strict=True)
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


def build_rows(
    old: ServiceRun,
    new: ServiceRun,
    aucs: dict[str, dict[str, list[float]]],
    raw_best: float,
    faces: list[Face],
    class_ids: list[str],
    clients: int,
) -> list[dict[str, str]]:
    rows = []
    for row in ROWS:
        checks = [map_agreement(old, new, row.method)]
        if row.faithfulness:
            before, after = mean(aucs["old"][row.method]), mean(aucs["new"][row.method])
            ok = abs(after - before) <= AUC_TOLERANCE
            checks.insert(
                0,
                f"deletion AUC {before:.3f} → {after:.3f} (Δ {after - before:+.3f}, "
                f"gate ±{AUC_TOLERANCE}: {'ok' if ok else 'FAILED'}; "
                f"n={len(aucs['new'][row.method])})",
            )
        if row.method == "lime" and new.lime_stability:
            before, after = mean(old.lime_stability), mean(new.lime_stability)
            checks.append(
                f"seed-to-seed Spearman {before:.3f} → {after:.3f} "
                f"({'ok' if after >= before - 0.01 else 'WORSE'})"
            )
        old_s, new_s = old.p50(row.method), new.p50(row.method)
        rows.append(
            {
                "request": f"{row.title}, p50",
                "old": f"{old_s * 1000:.0f} ms",
                "new": f"{new_s * 1000:.0f} ms",
                "new/old": f"{new_s / old_s:.2f}",
                "goal": f"≤ {row.goal_s * 1000:.0f} ms",
                "met": verdict(new_s <= row.goal_s),
                "checks": "; ".join(checks),
            }
        )
    old_ratio = old.predict["throughput"] / raw_best
    new_ratio = new.predict["throughput"] / raw_best
    agreement = mean([float(a == b) for a, b in zip(old.labels, new.labels, strict=True)])
    rows.append(
        {
            "request": f"/predict, {clients} clients: req/s over raw ONNX ({raw_best:.0f} img/s)",
            "old": f"{old_ratio:.2f} ({old.predict['throughput']:.0f}/s)",
            "new": f"{new_ratio:.2f} ({new.predict['throughput']:.0f}/s)",
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
    rows.append(
        {
            "request": "/predict, server CPU per request",
            "old": f"{old.cpu_per_request_s * 1000:.1f} ms",
            "new": f"{new.cpu_per_request_s * 1000:.1f} ms",
            "new/old": f"{new.cpu_per_request_s / old.cpu_per_request_s:.2f}",
            "goal": f"≤ {CPU_GOAL} × old",
            "met": verdict(new.cpu_per_request_s <= CPU_GOAL * old.cpu_per_request_s),
            "checks": f"failed answers under load {old.predict['failures']:.0f} → "
            f"{new.predict['failures']:.0f}",
        }
    )
    return rows


def markdown(rows: list[dict[str, str]]) -> str:
    columns = list(rows[0])
    lines = ["| " + " | ".join(columns) + " |", "| " + " | ".join("---" for _ in columns) + " |"]
    lines += ["| " + " | ".join(row[column] for column in columns) + " |" for row in rows]
    return "\n".join(lines)


def parameter_lines(old: ServiceRun, new: ServiceRun) -> list[str]:
    lines = []
    for row in ROWS:
        for run in (old, new):
            used = {**run.parameters[row.method], **explain_params(row, run.parameters[row.method])}
            shown = ", ".join(f"{k}={v}" for k, v in used.items()) or "-"
            lines.append(f"- {run.name} {row.method}: {shown}")
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
    print(
        f"bundle {meta.name} {meta.version}; {len(faces['test'])} test faces; "
        f"{os.cpu_count()} cores; {machine_load({os.getpid()})}",
        flush=True,
    )
    photos = [face.photo for face in faces["test"][:64]]
    raw_args = argparse.Namespace(model=args.model, threads=0, raw_seconds=args.raw_seconds)
    print("raw ONNX Runtime, FP32 model.onnx, threads as the service's default:", flush=True)
    raw = raw_throughput(raw_args, photos, args.batch_sizes)
    raw_best = max(raw.values())

    old = measure_service("old", args.old, faces, args)
    new = measure_service("new", ROOT, faces, args, tuple(shlex.split(args.new_options)))
    print("raw ONNX Runtime again, after both services (the table uses the first):", flush=True)
    raw_after = raw_throughput(raw_args, photos, [max(raw, key=raw.__getitem__)])

    session = create_session(args.model / ONNX_FILE, "cpu", 0)

    def forward(batch: np.ndarray) -> np.ndarray:
        return session.run(["logits"], {"input": batch})[0]

    inputs = [whole_upload_input(face.photo, preprocess) for face in faces["faith"]]
    aucs = {
        run.name: {
            row.method: deletion_aucs(
                run, row.method, inputs, forward, class_ids, args.steps, meta.input.framing
            )
            for row in ROWS
            if row.faithfulness
        }
        for run in (old, new)
    }
    rows = build_rows(old, new, aucs, raw_best, faces["accuracy"], class_ids, args.clients)

    print(f"\nold: {old.root} ({old.commit})\nnew: {new.root} ({new.commit})")
    print(
        f"{args.requests} requests per explanation row, one at a time, a different test face "
        f"each; /predict: {args.clients} clients for {args.duration:.0f} s; deletion AUC on "
        f"{len(inputs)} test faces sent whole at the model's input size, judged by the "
        "FP32 ONNX model\n"
    )
    print(markdown(rows))
    print("\nparameters (from each service's GET /explain; the row's own fixed ones applied):")
    print("\n".join(parameter_lines(old, new)))
    for run in (old, new):
        print(
            f"{run.name}: {run.provider}, precision {run.precision}; "
            f"INT8 gates recorded in meta.json: {run.int8_gates or 'none'}"
        )
        print(f"{run.name}: before: {run.load_before}\n{run.name}: after: {run.load_after}")
    print(
        f"raw ONNX best {raw_best:.0f} img/s before, {max(raw_after.values()):.0f} after; "
        f"cached answers: old {old.cached_answers}, new {new.cached_answers} (should be 0)"
    )
    if args.json:
        args.json.write_text(json.dumps(report(old, new, aucs, raw, raw_after, rows), indent=2))
        print(f"wrote {args.json}")


def report(
    old: ServiceRun,
    new: ServiceRun,
    aucs: dict[str, dict[str, list[float]]],
    raw: dict[int, float],
    raw_after: dict[int, float],
    rows: list[dict[str, str]],
) -> dict[str, Any]:
    """Every figure of the run, for ``--json``."""

    def figures(run: ServiceRun) -> dict[str, Any]:
        return {
            "root": run.root,
            "commit": run.commit,
            "precision": run.precision,
            "int8_gates": run.int8_gates,
            "parameters": run.parameters,
            "seconds": run.seconds,
            "deletion_auc": aucs[run.name],
            "lime_seed_spearman": run.lime_stability,
            "predict": run.predict,
            "cpu_per_request_s": run.cpu_per_request_s,
            "labels": run.labels,
            "cached_answers": run.cached_answers,
            "load_before": run.load_before,
            "load_after": run.load_after,
        }

    return {
        "raw_images_per_s": raw,
        "raw_after_images_per_s": raw_after,
        "old": figures(old),
        "new": figures(new),
        "table": rows,
    }


if __name__ == "__main__":
    main(get_args_parser().parse_args())
