"""``python -m training open-set-study``: which "none of the classes" score separates the classes
from strangers best? Prints the comparison table (README) and writes it as JSON.

Protocol (the one ``open_set.calibrate`` ships with): fusion weights and thresholds come from the
calibration side only (validation split + half of the strangers' identities); the figures that
count are those on the held-out side (test split + the other identities). The identities are
then swapped and everything is measured again, since four identities a side is a small sample.
Choosing by the held-out figures would leak them: the study names the best score by its
calibration AUROC.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

import numpy as np
import torch

from service.open_set import (
    MAX_LOGIT,
    MAX_SOFTMAX,
    component_scores,
    normalise,
    threshold_for_rejection_rate,
)

from .backbones import build_backbone
from .data import FaceDataset, scan
from .from_bundle import classifier_from_bundle
from .open_set import (
    centroid_cosine,
    energy,
    fit_fusion,
    knn_cosine,
    rates,
    split_identities,
)

log = logging.getLogger("training")

CAL, HELD = "unknown_calibration", "unknown_held_out"
SHIPPED_PAIR = ("max-softmax (today)", "cosine to 1-NN training face, fine-tuned")
SHIPPED = "shipped: fused (logistic) max-softmax + cosine to 1-NN training face, fine-tuned"
COLUMNS = (
    ("auroc", "AUROC"),
    ("far_at_frr_5", "FAR @ 5 % FRR"),
    ("far_at_frr_1", "FAR @ 1 % FRR"),
    ("frr_at_far_10", "FRR @ 10 % FAR"),
    ("frr_at_far_1", "FRR @ 1 % FAR"),
    ("false_rejection_rate", "FRR at threshold"),
    ("false_acceptance_rate", "FAR at threshold"),
)


@torch.no_grad()
def _embed(backbone, x: torch.Tensor) -> np.ndarray:
    backbone.eval()
    return torch.cat([backbone(x[i : i + 64]) for i in range(0, len(x), 64)]).numpy()


def candidate_scores(features: dict[str, dict[str, np.ndarray]]) -> dict[str, dict]:
    """``features[split]``: ``logits``, ``fine_tuned`` and ``frozen`` embeddings, ``labels``
    (train only). Returns ``{candidate: {split: (N,) scores}}`` for every split but train."""
    train = features["train"]
    out: dict[str, dict] = {}
    for split, f in features.items():
        if split == "train":
            continue
        logits = f["logits"]
        row = {
            "max-softmax (today)": component_scores([MAX_SOFTMAX], logits, None, None)[:, 0],
            "max-logit": component_scores([MAX_LOGIT], logits, None, None)[:, 0],
            "energy": energy(logits),
        }
        for name in ("fine_tuned", "frozen"):
            label = "fine-tuned" if name == "fine_tuned" else "frozen dlib"
            row[f"cosine to class centroid, {label}"] = centroid_cosine(
                f[name], train[name], train["labels"]
            )
            for k in (1, 5):
                row[f"cosine to {k}-NN training face, {label}"] = knn_cosine(
                    f[name], train[name], k
                )
        for candidate, scores in row.items():
            out.setdefault(candidate, {})[split] = scores
    return out


def _fused(scores: dict[str, dict], parts: tuple[str, str], how: str) -> dict[str, np.ndarray]:
    """Fusion of two candidates fit on the calibration side: ``logistic`` regression or the
    ``z-sum`` of scores standardised with the calibration side's mean and deviation."""
    stacked = {s: np.stack([scores[p][s] for p in parts], 1) for s in ("val", "test", CAL, HELD)}
    if how == "logistic":
        fusion = fit_fusion(stacked["val"], stacked[CAL], parts)
        return {s: fusion.from_parts(x) for s, x in stacked.items()}
    side = np.r_[stacked["val"], stacked[CAL]]
    mean, std = side.mean(0), side.std(0)
    return {s: ((x - mean) / std).sum(1) for s, x in stacked.items()}


def evaluate(scores: dict[str, dict], target_frr: float) -> dict[str, dict]:
    """Every candidate (plus fusions of the best logit score and the best embedding score by
    calibration AUROC) -> calibration and held-out figures at the ``target_frr`` threshold."""
    results = {name: _figures(s, target_frr) for name, s in scores.items()}
    logit_based = ("max-softmax (today)", "max-logit", "energy")

    def best(names):
        return max(names, key=lambda n: results[n]["calibration"]["auroc"])

    pair = (best(logit_based), best([n for n in scores if n not in logit_based]))
    for how in ("logistic", "z-sum"):
        name = f"fusion ({how}): {pair[0]} + {pair[1]}"
        results[name] = _figures(_fused(scores, pair, how), target_frr)
    results[SHIPPED] = _figures(_fused(scores, SHIPPED_PAIR, "logistic"), target_frr)
    return results


def _figures(s: dict[str, np.ndarray], target_frr: float) -> dict:
    threshold = threshold_for_rejection_rate(s["val"], target_frr)
    return {
        "calibration": rates(s["val"], s[CAL], threshold),
        "held_out": rates(s["test"], s[HELD], threshold),
    }


def table(results: dict[str, dict], title: str) -> str:
    head = "| score | calibration AUROC | " + " | ".join(label for _, label in COLUMNS) + " |"
    rows = [
        f"**{title}** (held-out figures unless named)",
        "",
        head,
        "|---" * (len(COLUMNS) + 2) + "|",
    ]
    for name, r in results.items():
        cells = [f"{r['calibration']['auroc']:.3f}"] + [
            f"{r['held_out'][key]:.3f}" for key, _ in COLUMNS
        ]
        rows.append(f"| {name} | " + " | ".join(cells) + " |")
    return "\n".join(rows)


def study_command(args) -> int:
    bundle = Path(args.bundle)
    model, prep, meta = classifier_from_bundle(bundle)
    split = json.loads((bundle / "split.json").read_text())
    root = Path(args.data or split["root"])
    frozen, _ = build_backbone(meta["architecture"]["backbone"], "default")
    tree = scan(args.others)
    seed = split["seed"]
    first, second = split_identities(tree.classes, seed)
    datasets = {
        name: FaceDataset(root, [tuple(s) for s in split["splits"][name]], prep, desc=name)
        for name in ("train", "val", "test")
    }
    for half, ids in (("first", first), ("second", second)):
        samples = [s for s in tree.samples if tree.classes[s[1]] in ids]
        datasets[half] = FaceDataset(tree.root, samples, prep, desc=half)
    features = {}
    with torch.no_grad():
        for name, d in datasets.items():
            x = prep.standardise(d.images)
            pairs = [model.logits_and_embedding(x[i : i + 64]) for i in range(0, len(x), 64)]
            features[name] = {
                "logits": torch.cat([p[0] for p in pairs]).numpy(),
                "fine_tuned": normalise(torch.cat([p[1] for p in pairs]).numpy()),
                "frozen": normalise(_embed(frozen, x)),
                "labels": d.labels.numpy(),
            }
    report: dict = {"bundle": str(bundle), "target_frr": args.target_frr, "protocols": []}
    for cal_ids, held_ids, cal_half, held_half in (
        (first, second, "first", "second"),
        (second, first, "second", "first"),
    ):
        per_split = {k: v for k, v in features.items() if k in ("train", "val", "test")}
        per_split[CAL], per_split[HELD] = features[cal_half], features[held_half]
        results = evaluate(candidate_scores(per_split), args.target_frr)
        title = f"calibrate on {', '.join(cal_ids)}; measure on {', '.join(held_ids)}"
        print(table(results, title) + "\n")
        report["protocols"].append(
            {"calibration_identities": cal_ids, "held_out_identities": held_ids, "results": results}
        )
    if args.json:
        Path(args.json).write_text(json.dumps(report, indent=2) + "\n")
        print(f"wrote {args.json}")
    return 0
