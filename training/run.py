"""The commands behind ``python -m training``: fit, export, evaluate, insight."""

from __future__ import annotations

import copy
import json
import logging
import random
import shutil
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import DataLoader

from service.bundle.format import ONNX_FILE, read_meta
from service.bundle.framing import template_in_frame
from training import report
from training.alignment import landmark_template
from training.augment import eval_transforms, train_transforms
from training.backbones import build_backbone
from training.baseline import HEAD, linear_probe, probe_classifier
from training.data import SPLITS, DataError, FaceDataset, class_weights, scan, split
from training.export import onnx_logits, write_bundle
from training.fit import Stage, fit, predict
from training.from_bundle import checkpoint_from_bundle
from training.insight import write_insight
from training.model import FaceClassifier
from training.open_set import GALLERY_FILE, calibrate, split_identities
from training.preprocess import Preprocessing
from training.selection import BASELINE, FINE_TUNED, choose

log = logging.getLogger("training")

NO_STAGES = "none"


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    if name == "cuda" and not torch.cuda.is_available():
        raise RuntimeError("--device cuda was asked for, but torch sees no CUDA device")
    log.info("training on %s", name)
    return torch.device(name)


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def _stages(args) -> list[Stage]:
    """The fine-tuning stages; none for ``--stages none`` (only the frozen-feature baseline)."""
    if args.stages.strip() == NO_STAGES:
        if args.no_baseline or args.export == FINE_TUNED:
            raise ValueError(
                "--stages none trains only the frozen-feature baseline: it cannot go with "
                "--no-baseline or --export fine-tuned"
            )
        return []
    names = [s.strip() for s in args.stages.split(",") if s.strip()]
    if not (len(names) == len(args.epochs) == len(args.lr)):
        raise ValueError(
            f"--stages ({len(names)}), --epochs ({len(args.epochs)}) and --lr ({len(args.lr)}) "
            "need one value per stage"
        )
    return [Stage(n, e, lr) for n, e, lr in zip(names, args.epochs, args.lr, strict=True)]


def _limit(tree, per_class: int | None, seed: int):
    if per_class:
        rng = np.random.default_rng(seed)
        kept = []
        for index in range(len(tree.classes)):
            items = [s for s in tree.samples if s[1] == index]
            kept += [items[i] for i in sorted(rng.permutation(len(items))[:per_class])]
        tree.samples = kept
    return tree


def _stack(dataset: FaceDataset, prep: Preprocessing) -> torch.Tensor:
    return prep.standardise(dataset.images)


@torch.no_grad()
def _outputs(
    model: FaceClassifier, dataset: FaceDataset, prep: Preprocessing
) -> tuple[np.ndarray, np.ndarray]:
    """(logits, embeddings) of ``model`` (CPU, eval mode) over ``dataset``."""
    model = model.cpu().eval()
    x = _stack(dataset, prep)
    pairs = [model.logits_and_embedding(x[i : i + 64]) for i in range(0, len(x), 64)]
    return (
        torch.cat([logits for logits, _ in pairs]).numpy(),
        torch.cat([emb for _, emb in pairs]).numpy(),
    )


def _strangers(
    others: str, prep: Preprocessing, seed: int
) -> tuple[dict[str, FaceDataset], list[str], list[str]]:
    """The strangers' faces under ``others``, split by identity: calibration and held out."""
    tree = scan(others)
    calibration_ids, held_out_ids = split_identities(tree.classes, seed)
    strangers = {
        name: FaceDataset(
            tree.root, [s for s in tree.samples if tree.classes[s[1]] in ids], prep, desc=name
        )
        for name, ids in (
            ("unknown_calibration", calibration_ids),
            ("unknown_held_out", held_out_ids),
        )
    }
    return strangers, calibration_ids, held_out_ids


def _open_set(
    model: FaceClassifier, prep: Preprocessing, sets: dict, others: str, seed: int
) -> tuple[dict, np.ndarray]:
    """meta.json's ``open_set`` block and its gallery, calibrated on strangers under ``others``."""
    strangers, calibration_ids, held_out_ids = _strangers(others, prep, seed)
    outputs = {name: _outputs(model, d, prep) for name, d in {**sets, **strangers}.items()}
    block, gallery = calibrate(outputs, calibration_ids, held_out_ids)
    log.info(
        "open set: threshold %.4f for a %.0f %% false rejection target; calibration %s; "
        "held out %s",
        block["threshold"],
        100 * block["target_false_rejection_rate"],
        _rates_line(block["calibration"]),
        _rates_line(block["held_out"]),
    )
    return block, gallery


def _rates_line(r: dict) -> str:
    return (
        f"AUROC {r['auroc']:.3f}, FRR {r['false_rejection_rate']:.3f}, "
        f"FAR {r['false_acceptance_rate']:.3f}"
    )


def _export(
    ckpt: dict,
    model: FaceClassifier,
    prep: Preprocessing,
    sets: dict,
    out: Path,
    report_dir: Path | None,
    others: str | None,
    insight: bool = True,
) -> dict:
    """Write the bundle for a trained model: ``sets`` are the split's datasets (train/val/test);
    ``insight``: add the top patches (``write_insight``) once the bundle is in place."""
    args = ckpt["args"]
    model = model.cpu().eval()
    meta_extra = {
        "architecture": {
            "backbone": args["backbone"],
            "head": HEAD
            if ckpt.get("selection", {}).get("exported") == BASELINE
            else "batchnorm-dropout-linear",
            "embedding_dim": model.backbone.embedding_dim,
            "parameters": sum(p.numel() for p in model.parameters()),
        },
        "training": ckpt["training"],
        "metrics": ckpt["metrics"],
        **({"selection": ckpt["selection"]} if "selection" in ckpt else {}),
        "face_alignment": _face_alignment(ckpt, sets["train"], prep),
        "license_note": (
            "Trained on face photos for research and education only (see the data's README)."
        ),
    }
    arrays = {}
    if others:
        block, gallery = _open_set(model, prep, sets, others, ckpt["split"]["seed"])
        meta_extra["open_set"] = block
        arrays[GALLERY_FILE] = gallery
    meta = write_bundle(
        out,
        model=model,
        prep=prep,
        classes=ckpt["classes"],
        parity_inputs=_stack(sets["test"], prep),
        split=ckpt["split"],
        meta_extra=meta_extra,
        report_dir=report_dir,
        name=ckpt.get("name"),  # a re-exported bundle keeps its name; else the directory's
        version=args["version"],
        arrays=arrays,
    )
    if insight:
        meta["insight"] = write_insight(out, data_root=sets["train"].root)
    return meta


def _framed(prep: Preprocessing, framing: str, backbone: str, alignment: dict) -> Preprocessing:
    """``prep`` with the ``--framing`` box: ``dlib-chip`` (``auto`` for the dlib backbone) is
    where dlib's own face chips lie in the training crops, as ``alignment`` measured it."""
    if framing == "auto":
        framing = "dlib-chip" if backbone == "dlib-resnet29" else "none"
    if framing == "none":
        return prep
    box = tuple(alignment["dlib_chip_box"])
    log.info("framing: the model sees the box %s of every crop (dlib's chip)", box)
    return prep.model_copy(update={"framing": box})


def _face_alignment(ckpt: dict, train: FaceDataset, prep: Preprocessing) -> dict:
    """meta.json's ``face_alignment``: the landmark template measured on the training crops
    (by ``fit``, else now), expressed in the model's framing so that aligned photos are framed
    as the training crops were."""
    measured = ckpt.get("face_alignment") or landmark_template(
        train.root, [rel for rel, _ in train.samples]
    )
    template = {k: v for k, v in measured.items() if k != "dlib_chip_box"}
    if prep.framing is not None:
        template["points"] = template_in_frame(measured["points"], prep.framing)
        template["framing"] = list(prep.framing)
    return {"detector": "dlib-hog-frontal", "landmarks": "dlib-5-point", **template}


def fit_command(args) -> int:
    started = time.perf_counter()
    seed_everything(args.seed)
    if args.threads:
        torch.set_num_threads(args.threads)
    device = resolve_device(args.device)
    stages = _stages(args)
    others = _others(args)
    tree = _limit(scan(args.data), args.limit_per_class, args.seed)
    parts = split(tree, val=args.val, test=args.test, seed=args.seed)
    backbone, prep = build_backbone(args.backbone, args.weights)
    root = Path(args.data)
    alignment = landmark_template(root, [rel for rel, _ in parts["train"]])
    prep = _framed(prep, args.framing, args.backbone, alignment)
    sets = {
        name: FaceDataset(root, parts[name], prep, eval_transforms(), desc=name) for name in SPLITS
    }
    generator = torch.Generator().manual_seed(args.seed)
    train_loader = DataLoader(
        sets["train"].with_transform(train_transforms(preset=args.augment)),
        batch_size=args.batch_size,
        shuffle=True,
        drop_last=True,
        generator=generator,
    )
    plain = {name: DataLoader(sets[name], batch_size=64) for name in SPLITS}
    log.info("data: %s", {name: len(s) for name, s in sets.items()})

    baseline, baseline_model = None, None
    if not args.no_baseline:
        frozen = copy.deepcopy(backbone)  # fine-tuning changes ``backbone`` in place
        baseline, probe = linear_probe(
            frozen.to(device), plain, prep.standardise, device, seed=args.seed
        )
        baseline_model = probe_classifier(frozen, probe, args.dropout)
        log.info("baseline (frozen features + logistic regression): %s", baseline)

    candidates: dict[str, FaceClassifier] = {}
    history: list[dict] = []
    if stages:
        model = FaceClassifier(backbone, len(tree.classes), dropout=args.dropout)
        weights = class_weights(sets["train"].labels, len(tree.classes))
        history = fit(
            model,
            train_loader,
            plain["val"],
            prep.standardise,
            stages=stages,
            class_weights=weights,
            optimizer=args.optimizer,
            weight_decay=args.weight_decay,
            unfreeze_last=args.unfreeze_last,
            lr_decay=args.lr_decay,
            patience=args.patience,
            label_smoothing=args.label_smoothing,
            device=device,
        )
        candidates[FINE_TUNED] = model
    run_dir = Path(args.run_dir or Path("runs") / Path(args.out).name)
    report_dir = run_dir / "report"
    report_dir.mkdir(parents=True, exist_ok=True)
    if baseline_model is not None:
        candidates[BASELINE] = baseline_model
    val = {name: _val_figures(m, plain["val"], prep, device) for name, m in candidates.items()}
    selection = choose(val, args.export if stages else BASELINE)
    if not stages:
        selection["reason"] = "--stages none: the frozen-feature baseline is the only model"
    log.info("exporting the %s model: %s", selection["exported"], selection["reason"])
    model = candidates[selection["exported"]]
    metrics = {}
    for name in SPLITS:
        logits, labels = predict(model, plain[name], prep.standardise, device)
        metrics[name] = report.classification_metrics(
            labels.numpy(), logits.argmax(1).numpy(), tree.classes
        )
        if name == "test":
            report.plot_confusion(
                labels.numpy(),
                logits.argmax(1).numpy(),
                tree.classes,
                report_dir / "confusion_test.png",
                f"Test split: {selection['exported']} model",
            )
    if baseline:
        metrics["baseline_linear_probe"] = {
            split_name: {"accuracy": acc} for split_name, acc in baseline.items()
        }
    if FINE_TUNED in candidates:
        metrics["fine_tuned"] = {
            split_name: {
                "accuracy": _accuracy(candidates[FINE_TUNED], plain[split_name], prep, device)
            }
            for split_name in SPLITS
        }
    if history:
        report.plot_curves(history, report_dir / "curves.png")
    report.write_json(
        {"metrics": metrics, "selection": selection, "history": history},
        report_dir / "metrics.json",
    )
    wall = time.perf_counter() - started
    ckpt = {
        "args": vars(args),
        "classes": tree.classes,
        "split": {
            "root": str(args.data),
            "seed": args.seed,
            "val": args.val,
            "test": args.test,
            "splits": {name: [list(s) for s in parts[name]] for name in SPLITS},
        },
        "training": {
            "data": {
                "root": str(args.data),
                "counts": {name: tree.counts(parts[name]) for name in SPLITS},
                "skipped_files": tree.skipped,
            },
            "args": {k: v for k, v in vars(args).items() if k != "log_level"},
            "stages": [vars(s) for s in stages],
            "history": history,
            "device": str(device),
            "torch_threads": torch.get_num_threads(),
            "wall_time_s": round(wall, 1),
        },
        "metrics": metrics,
        "selection": selection,
        "face_alignment": alignment,
        "input": prep.to_meta(),
        "state_dict": model.state_dict(),
    }
    torch.save(ckpt, run_dir / "checkpoint.pt")
    meta = _export(ckpt, model, prep, sets, Path(args.out), report_dir, others, not args.no_insight)
    print(summary_table(meta))
    return 0


def _val_figures(model, loader, prep: Preprocessing, device) -> dict[str, float]:
    """Validation accuracy and (plain) cross-entropy: what ``selection.choose`` compares."""
    logits, labels = predict(model, loader, prep.standardise, device)
    return {
        "accuracy": float((logits.argmax(1) == labels).float().mean()),
        "loss": float(torch.nn.functional.cross_entropy(logits, labels)),
    }


def _accuracy(model, loader, prep: Preprocessing, device) -> float:
    logits, labels = predict(model, loader, prep.standardise, device)
    return float((logits.argmax(1) == labels).float().mean())


def summary_table(meta: dict) -> str:
    m = meta["metrics"]
    rows = ["| model | train | val | test |", "| --- | --- | --- | --- |"]
    if "baseline_linear_probe" in m:
        b = m["baseline_linear_probe"]
        rows.append(
            f"| frozen {meta['architecture']['backbone']} features + logistic regression | "
            + " | ".join(f"{b[s]['accuracy']:.4f}" for s in SPLITS)
            + " |"
        )
    tuned = m.get("fine_tuned", m)  # bundles from before the selection: metrics are its own
    if "fine_tuned" in m or "selection" not in meta:  # --stages none: no fine-tuned model
        stages = " -> ".join(s["name"] for s in meta["training"].get("stages", []))
        rows.append(
            f"| {meta['architecture']['backbone']}, staged training "
            f"({stages or 'head -> top -> all'}) | "
            + " | ".join(f"{tuned[s]['accuracy']:.4f}" for s in SPLITS)
            + " |"
        )
    if "selection" in meta:
        rows.append(
            f"\nexported: the {meta['selection']['exported']} model ({meta['selection']['reason']})"
        )
    t, parity = meta["training"], meta["parity"]
    rows.append(
        f"\ntraining wall time {t['wall_time_s']} s on {t['device']} "
        f"({t['torch_threads']} threads); "
        f"ONNX parity max |diff| {parity['max_abs_diff']:.2e} over {parity['images']} images"
    )
    return "\n".join(rows)


def export_command(args) -> int:
    if args.bundle:  # rewrite a bundle from its own twin's weights (no retraining)
        ckpt, model, prep = checkpoint_from_bundle(Path(args.bundle))
        report_dir = Path(args.bundle) / "report"
    else:
        ckpt = torch.load(args.checkpoint, map_location="cpu", weights_only=False)
        a = ckpt["args"]
        backbone, prep = build_backbone(a["backbone"], "none")
        if "input" in ckpt:  # its framing
            prep = Preprocessing.from_meta(ckpt["input"])
        model = FaceClassifier(backbone, len(ckpt["classes"]), dropout=a["dropout"])
        model.load_state_dict(ckpt["state_dict"])
        report_dir = Path(args.checkpoint).parent / "report"
    root = Path(args.data or ckpt["split"]["root"])
    sets = {
        name: FaceDataset(root, [tuple(s) for s in ckpt["split"]["splits"][name]], prep, desc=name)
        for name in SPLITS
    }
    with tempfile.TemporaryDirectory(prefix="report-") as staged:
        if args.bundle and report_dir.is_dir():  # the bundle is replaced: copy its report first
            report_dir = Path(shutil.copytree(report_dir, Path(staged) / "report"))
        meta = _export(
            ckpt,
            model,
            prep,
            sets,
            Path(args.out),
            report_dir if report_dir.is_dir() else None,
            _others(args),
            not args.no_insight,
        )
    print(f"wrote {args.out} (parity max |diff| {meta['parity']['max_abs_diff']:.2e})")
    return 0


def _others(args) -> str | None:
    """``--others`` as a path, None for ``none``; checked up front, not after a long fit."""
    if args.others == "none":
        return None
    if not Path(args.others).is_dir():
        raise DataError(
            f"--others {args.others} is not a directory of strangers' faces; "
            "pass --others none to skip the 'none of the classes' calibration"
        )
    return args.others


def evaluate_command(args) -> int:
    bundle = Path(args.bundle)
    meta = read_meta(bundle)
    recorded = json.loads((bundle / "split.json").read_text())
    prep = Preprocessing.from_meta(meta.input.model_dump())
    classes = [c.id for c in meta.classes]
    root = Path(args.data or recorded["root"])
    if args.split == "all":
        tree = scan(root)
        if tree.classes != classes:
            raise ValueError(f"{root} has classes {tree.classes}, the bundle {classes}")
        samples = tree.samples
    else:
        samples = [tuple(s) for s in recorded["splits"][args.split]]
    dataset = FaceDataset(root, samples, prep, desc=args.split)
    logits = onnx_logits(bundle / ONNX_FILE, _stack(dataset, prep).numpy())
    result = report.classification_metrics(dataset.labels.numpy(), logits.argmax(1), classes)
    print(
        f"{bundle} on {args.split} ({len(samples)} images under {root}): "
        f"accuracy {result['accuracy']:.4f}"
    )
    for name in classes:
        c = result["per_class"][name]
        print(
            f"  {name:<20} precision {c['precision']:.3f} recall {c['recall']:.3f} "
            f"n={int(c['support'])}"
        )
    return 0


def insight_command(args) -> int:
    if args.threads:
        torch.set_num_threads(args.threads)
    layers = (
        tuple(name.strip() for name in args.layers.split(",") if name.strip())
        if args.layers
        else None
    )
    block = write_insight(
        Path(args.bundle),
        Path(args.data) if args.data else None,
        layers,
        args.per_channel,
        args.limit,
    )
    print(
        f"wrote {args.bundle}/{block['top_patches']}: top {block['per_channel']} patches per "
        f"channel of {', '.join(block['layers'])} from {block['images']} training images; "
        "meta.json updated"
    )
    return 0
