"""``python -m training one-pass``: fit the one-pass explainer to a bundle's model, gate it,
and add it to the bundle.

1. the train split's faces (and some of the validation split's) scored under Shapley-kernel
   coalitions of the grid (``samples``), through the bundle's FP32 ONNX model;
2. ``--heads`` heads fitted on the frozen trunk's features (``fit``), each from its own seed,
   the best validation epoch of each kept, their values averaged;
3. trunk and head exported to ONNX, checked against torch;
4. the gates on the test split (``gates``): faithfulness against LIME and occlusion, and the
   model-randomisation test;
5. only if both pass: ``one_pass.onnx`` and ``meta.json["one_pass"]`` (its sha256 in ``files``)
   written into the bundle. A failed gate leaves the bundle as it was and says the figures.
"""

from __future__ import annotations

import copy
import json
import logging
import os
import time
import warnings
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime as ort
import torch

from service.bundle.checks import check_one_pass, load_twin, probe_batch
from service.bundle.format import ONE_PASS_FILE, ONNX_FILE, OnePassSpec, read_meta
from service.bundle.preprocess import Preprocessor
from service.explain.one_pass import FastShap, OnePassModel
from training.bundle_meta import update_meta
from training.export import ONNX_OPSET
from training.from_bundle import classifier_from_bundle
from training.one_pass.fit import FitConfig, fit_heads
from training.one_pass.gates import MARGIN, faithfulness, randomisation
from training.one_pass.net import OnePassNet, Trunk
from training.one_pass.samples import check_grid, make_samples, split_faces
from training.sanity import load_faces

log = logging.getLogger(__name__)

OUTPUT = "values"
PARITY_TOLERANCE = 1e-3
DECIMALS = 4


def onnx_forward(path: Path, threads: int, output: str) -> Any:
    """``(N, 3, H, W)`` -> ``output`` of the ONNX graph at ``path``."""
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])

    def run(batch: np.ndarray) -> np.ndarray:
        values: np.ndarray = session.run([output], {"input": batch})[0]
        return values

    return run


def export_onnx(net: OnePassNet, example: torch.Tensor, path: Path) -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # tracer notes on shape arithmetic that is constant here
        torch.onnx.export(
            net,
            (example,),
            str(path),
            input_names=["input"],
            output_names=[OUTPUT],
            dynamic_axes={"input": {0: "batch"}, OUTPUT: {0: "batch"}},
            opset_version=ONNX_OPSET,
            dynamo=False,
        )


def one_pass_command(args: Any) -> int:
    """Run the five steps (the module's docstring); 0 once the bundle has the explainer,
    ``RuntimeError`` (exit 2) when a gate fails."""
    torch.set_num_threads(args.threads)
    started = time.perf_counter()
    bundle, images = Path(args.bundle), Path(args.data)
    meta = read_meta(bundle)
    preprocess = Preprocessor(meta.input)
    classifier, _, _ = classifier_from_bundle(bundle)
    trunk = Trunk(classifier, args.layer, args.context).eval()
    forward = onnx_forward(bundle / ONNX_FILE, args.threads, "logits")

    def features(batch: np.ndarray) -> np.ndarray:
        with torch.no_grad():
            return trunk(torch.from_numpy(batch)).numpy()

    probe = probe_batch(preprocess)
    check_grid(features(probe[:1]), args.grid, args.layer)
    baseline = forward(np.zeros_like(probe[:1]))[0]

    train_faces = split_faces(bundle, images, "train", preprocess, args.train_faces or None)
    val_faces = split_faces(bundle, images, "val", preprocess, args.val_faces)
    log.info("%d train and %d val faces read", len(train_faces[1]), len(val_faces[1]))
    grid, masks = args.grid, args.masks
    train = make_samples(
        forward, features, *train_faces, grid=grid, masks=masks, seed=args.seed, name="train"
    )
    val = make_samples(
        forward, features, *val_faces, grid=grid, masks=masks, seed=args.seed + 1, name="val"
    )
    config = FitConfig(
        epochs=args.epochs,
        lr=args.lr,
        weight_decay=args.weight_decay,
        width=args.width,
        seed=args.seed,
        value=args.value,
        dropout=args.dropout,
    )
    heads, histories = fit_heads(train, val, baseline, config, args.heads)
    net = OnePassNet(trunk, heads).eval()

    staged = bundle / f".{ONE_PASS_FILE}.tmp-{os.getpid()}"
    try:
        export_onnx(net, torch.from_numpy(probe), staged)
        run = onnx_forward(staged, args.threads, OUTPUT)
        with torch.no_grad():
            expected = net(torch.from_numpy(probe)).numpy()
        parity = float(np.max(np.abs(run(probe) - expected)))
        if not parity <= PARITY_TOLERANCE:
            raise RuntimeError(f"ONNX and torch explainer differ by {parity:.3g} on the probe")
        one_pass = OnePassModel(run, baseline, grid, args.value)
        test_faces, _ = split_faces(bundle, images, "test", preprocess, args.gate_faces)
        faithful = faithfulness(forward, one_pass, list(test_faces))
        sanity_faces = [
            (x, label) for x, label, _ in load_faces(bundle, images, args.sanity_faces, preprocess)
        ]
        random_check = randomisation(
            copy.deepcopy(load_twin(bundle)),
            [layer.name for layer in meta.layers],
            args.layer,
            args.context,
            grid,
            split_faces(bundle, images, "train", preprocess, args.sanity_fit_faces),
            split_faces(bundle, images, "val", preprocess, args.sanity_fit_faces // 4),
            sanity_faces,
            args.sanity_masks,
            config,
        )
        print(report(faithful, random_check))
        if not (faithful["passed"] and random_check["passed"]):
            raise RuntimeError(
                "the one-pass explainer failed its gates (figures above); the bundle is "
                "unchanged: "
                + json.dumps({"faithfulness": faithful, "randomisation": random_check})
            )
        entry = {
            "method": FastShap.name,
            "file": ONE_PASS_FILE,
            "grid": grid,
            "output": OUTPUT,
            "value": args.value,
            "explains": (
                f"Shapley values of every class's {args.value.replace('_', '-')} over a "
                f"{grid}x{grid} grid of the model input, hidden cells at model input 0 (the "
                "deletion baseline); the raw output plus an equal share of what it misses of the "
                "value on the face minus on the all-hidden image, per class (additive efficient "
                "normalisation); a class's map is its values minus the mean of every class's "
                "(its centred logit's Shapley values)"
            ),
            "trunk": (
                f"the model's own stages (frozen): {args.layer}'s activation"
                + (
                    f" with {', '.join(args.context)}'s laid on its grid (bilinear) as more "
                    "channels"
                    if args.context
                    else ""
                )
            ),
            "heads": args.heads,
            "gates": {"faithfulness": faithful, "randomisation": random_check},
            "training": {
                "args": {k: v for k, v in vars(args).items() if k != "func"},
                "train_faces": len(train.labels),
                "val_faces": len(val.labels),
                "masks_per_face": masks,
                "sampling": "Shapley kernel, antithetic pairs",
                "best_val_loss": [
                    round(min(h["val_loss"] for h in history), DECIMALS) for history in histories
                ],
                "history": [
                    [{k: round(v, DECIMALS) for k, v in h.items()} for h in history]
                    for history in histories
                ],
                "onnx_parity_max_abs_diff": parity,
                "wall_time_s": round(time.perf_counter() - started, 1),
                "created_at": datetime.now(UTC).replace(microsecond=0).isoformat(),
            },
        }
        if args.dry_run:
            print(f"--dry-run: {bundle} not changed")
            return 0
        spec = OnePassSpec.model_validate(entry)
        check_one_pass(meta.model_copy(update={"one_pass": spec}), run(probe), probe)
        os.replace(staged, bundle / ONE_PASS_FILE)
    finally:
        staged.unlink(missing_ok=True)
    update_meta(bundle, lambda raw: raw.update(one_pass=entry), files=[ONE_PASS_FILE])
    print(f"wrote {ONE_PASS_FILE} and meta.json['one_pass'] of {bundle}")
    return 0


def report(faithful: dict[str, Any], random_check: dict[str, Any]) -> str:
    """The gates' figures as the CLI prints them."""
    lines = [
        f"Faithfulness on {faithful['faces']} test faces ({faithful['steps']} steps, predicted "
        f"class; gate: within {MARGIN} of lime and occlusion): "
        + ("passed" if faithful["passed"] else "FAILED"),
        "| method | deletion AUC | insertion AUC | deletion / random |",
        "| --- | --- | --- | --- |",
    ]
    for name, m in faithful["methods"].items():
        lines.append(
            f"| {name} | {m['deletion_auc']:.3f} | {m['insertion_auc']:.3f} "
            f"| {m['deletion_ratio_to_random']:.3f} |"
        )
    stages = ", ".join(f"{s['stage']} {s['spearman']:.3f}" for s in random_check["stages"])
    verdict = "passed" if random_check["passed"] else "FAILED"
    lines.append(f"\nModel randomisation (mean Spearman per stage, refitted): {stages}: {verdict}")
    return "\n".join(lines)
