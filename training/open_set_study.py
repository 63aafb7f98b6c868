"""``python -m training open-set-study``: which "none of the classes" score separates the classes
from strangers best? Prints the comparison table (docs/training.md) and writes it as JSON.

Protocol (the one ``open_set.calibrate`` ships with): fusion weights and thresholds come from the
calibration side only (validation split + half of the strangers' identities); the figures that
count are those on the held-out side (test split + the other identities). The identities are
then swapped and everything is measured again, since four identities a side is a small sample.
Choosing by the held-out figures would leak them: the study names the best score by its
calibration AUROC. Each face is also run mirrored (a second forward pass): the "mirrored too"
candidates average the two views' logits, or their normalised embeddings (``flip_averaged``, for
the training faces of the gallery too). After each table, which held-out strangers the shipped
score and the best fusion accept, per identity and as whom (``acceptances``).

The frozen dlib network is also run on the faces framed as dlib frames its own 150x150 chips
(``service.bundle.framing``, the bundle's ``input.framing`` or ``DLIB_CHIP_BOX``): the training
crops are framed tighter and higher than the chips dlib's network was trained on, and the frozen
embedding's
nearest-face score depends on that framing.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

import numpy as np
import torch

from service.bundle.open_set import (
    MAX_LOGIT,
    MAX_SOFTMAX,
    component_scores,
    normalise,
    threshold_for_operating_point,
)
from training.backbones import build_backbone
from training.data import FaceDataset, scan
from training.from_bundle import classifier_from_bundle
from training.open_set import (
    acceptances,
    centroid_cosine,
    class_margin,
    energy,
    fit_fusion,
    flip_averaged,
    knn_cosine,
    rates,
    split_identities,
)

log = logging.getLogger("training")

CAL, HELD = "unknown_calibration", "unknown_held_out"
SHIPPED_PAIR = ("max-softmax (today)", "cosine to 1-NN training face, fine-tuned")
SHIPPED = "shipped: fused (logistic) max-softmax + cosine to 1-NN training face, fine-tuned"
MIRRORED = ", mirrored too"
LOGIT_BASED = ("max-softmax (today)", "max-logit", "energy", "max-softmax" + MIRRORED)
DLIB_FRAMED = "frozen dlib, faces framed as dlib's chips"
MARGIN = "nearest-class margin (1-NN cosine, best class - next class), fine-tuned"
THREE = ("max-softmax", "cosine to 1-NN training face, fine-tuned", MARGIN)
COLUMNS = (
    ("auroc", "AUROC"),
    ("far_at_frr_5", "FAR @ 5 % FRR"),
    ("far_at_frr_1", "FAR @ 1 % FRR"),
    ("frr_at_far_10", "FRR @ 10 % FAR"),
    ("frr_at_far_1", "FRR @ 1 % FAR"),
    ("false_rejection_rate", "FRR at threshold"),
    ("false_acceptance_rate", "FAR at threshold"),
)


# Where dlib's own chip (dlib.get_face_chip_details(landmarks, 150, padding=0.25)) lies in a
# celebs8 training crop, as fractions of its width and height (left, top, right, bottom): the
# mean over the 1,126 training crops in which dlib's HOG detector finds the face, as ``fit``
# measures it (``alignment.landmark_template``). The chip reaches 8 % below the crop. Used for a
# bundle that was not trained on framed crops; a framed bundle's own box is used otherwise.
DLIB_CHIP_BOX = (0.0615, 0.1981, 0.9426, 1.0792)


@torch.no_grad()
def _embed(backbone, x: torch.Tensor) -> np.ndarray:
    backbone.eval()
    return torch.cat([backbone(x[i : i + 64]) for i in range(0, len(x), 64)]).numpy()


def candidate_scores(features: dict[str, dict[str, np.ndarray]]) -> dict[str, dict]:
    """``features[split]``: ``logits``, ``fine_tuned`` and ``frozen`` embeddings (and
    ``frozen_dlib_framed``: the frozen network on the faces framed as dlib's chips), the logits and
    fine-tuned embeddings of the mirrored faces (``logits_mirrored``, ``fine_tuned_mirrored``),
    ``labels`` (train only). Returns ``{candidate: {split: (N,) scores}}`` for every split but
    train."""
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
            "max-softmax" + MIRRORED: component_scores(
                [MAX_SOFTMAX], (logits + f["logits_mirrored"]) / 2, None, None
            )[:, 0],
        }
        both = flip_averaged(f["fine_tuned"], f["fine_tuned_mirrored"])
        gallery = flip_averaged(train["fine_tuned"], train["fine_tuned_mirrored"])
        row["cosine to 1-NN training face, fine-tuned" + MIRRORED] = knn_cosine(both, gallery, 1)
        row[MARGIN] = class_margin(f["fine_tuned"], train["fine_tuned"], train["labels"])
        row[MARGIN + MIRRORED] = class_margin(both, gallery, train["labels"])
        row[f"cosine to 1-NN training face, {DLIB_FRAMED}"] = knn_cosine(
            f["frozen_dlib_framed"], train["frozen_dlib_framed"], 1
        )
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


def _fused(scores: dict[str, dict], parts: tuple[str, ...], how: str) -> dict[str, np.ndarray]:
    """Fusion of candidates fit on the calibration side: ``logistic`` regression or the
    ``z-sum`` of scores standardised with the calibration side's mean and deviation."""
    stacked = {s: np.stack([scores[p][s] for p in parts], 1) for s in ("val", "test", CAL, HELD)}
    if how == "logistic":
        fusion = fit_fusion(stacked["val"], stacked[CAL], parts)
        return {s: fusion.from_parts(x) for s, x in stacked.items()}
    side = np.r_[stacked["val"], stacked[CAL]]
    mean, std = side.mean(0), side.std(0)
    return {s: ((x - mean) / std).sum(1) for s, x in stacked.items()}


def evaluate(scores: dict[str, dict], target_frr: float) -> tuple[dict[str, dict], str]:
    """Every candidate (plus fusions of the best logit score and the best embedding score by
    calibration AUROC, and the shipped fusion) -> calibration and held-out figures at the
    ``target_frr`` threshold; ``scores`` gains the fusions. Returns (figures, the name of the
    fusion with the best calibration AUROC)."""
    results = {name: _figures(s, target_frr) for name, s in scores.items()}

    def best(names):
        return max(names, key=lambda n: results[n]["calibration"]["auroc"])

    logit_based = [n for n in scores if n in LOGIT_BASED]
    pair = (best(logit_based), best([n for n in scores if n not in LOGIT_BASED]))
    fusions: dict[str, tuple[tuple[str, ...], str]] = {
        f"fusion ({how}): {pair[0]} + {pair[1]}": (pair, how) for how in ("logistic", "z-sum")
    }
    three = ("max-softmax (today)", *THREE[1:])
    fusions["fusion (logistic): " + " + ".join(THREE)] = (three, "logistic")
    mirrored = tuple(n + MIRRORED for n in THREE)
    fusions["fusion (logistic): " + " + ".join(mirrored)] = (mirrored, "logistic")
    fusions[SHIPPED] = (SHIPPED_PAIR, "logistic")
    for name, (parts, how) in fusions.items():
        scores[name] = _fused(scores, parts, how)
        results[name] = _figures(scores[name], target_frr)
    return results, best([n for n in fusions if n != SHIPPED])


def _figures(s: dict[str, np.ndarray], target_frr: float) -> dict:
    threshold = threshold_for_operating_point(s["val"], s[CAL], target_frr)
    return {
        "threshold": threshold,
        "calibration": rates(s["val"], s[CAL], threshold),
        "held_out": rates(s["test"], s[HELD], threshold),
    }


def nearest_face_accuracy(features: dict[str, dict[str, np.ndarray]]) -> dict[str, dict]:
    """How often the nearest training face's class is the face's own, per embedding, on the
    validation and test splits: whether an embedding that separates strangers also classifies."""
    train = features["train"]
    out: dict[str, dict] = {}
    for name in ("fine_tuned", "frozen", "frozen_dlib_framed"):
        out[name] = {
            split: float(
                (
                    train["labels"][(features[split][name] @ train[name].T).argmax(1)]
                    == features[split]["labels"]
                ).mean()
            )
            for split in ("val", "test")
        }
    return out


def breakdown_lines(name: str, per_identity: dict[str, dict]) -> str:
    """The held-out strangers a score accepts, one identity a line."""
    lines = [f"held-out strangers accepted by {name}:"]
    for who, r in per_identity.items():
        named = ", ".join(f"{n} as {c}" for c, n in r["as"].items()) or "-"
        lines.append(f"  {who}: {r['accepted']}/{r['of']} ({named}); top scores {r['top_scores']}")
    return "\n".join(lines)


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
    classes = [c["id"] for c in meta["classes"]]
    tree = scan(args.others)
    seed = split["seed"]
    first, second = split_identities(tree.classes, seed)
    framed = prep if prep.framing else prep.model_copy(update={"framing": DLIB_CHIP_BOX})
    datasets, framed_images = {}, {}
    parts = {
        name: (root, [tuple(s) for s in split["splits"][name]]) for name in ("train", "val", "test")
    }
    for half, ids in (("first", first), ("second", second)):
        parts[half] = (tree.root, [s for s in tree.samples if tree.classes[s[1]] in ids])
    for name, (where, samples) in parts.items():
        datasets[name] = FaceDataset(where, samples, prep, desc=name)
        if framed is not prep:  # a framed bundle's own faces already are framed so
            framed_images[name] = FaceDataset(where, samples, framed, desc=f"{name}, framed").images
    features = {}
    with torch.no_grad():
        for name, d in datasets.items():
            x = prep.standardise(d.images)
            pairs = [model.logits_and_embedding(x[i : i + 64]) for i in range(0, len(x), 64)]
            mirrored = torch.flip(x, dims=[3])
            flips = [model.logits_and_embedding(mirrored[i : i + 64]) for i in range(0, len(x), 64)]
            embedded = normalise(_embed(frozen, x))
            features[name] = {
                "logits": torch.cat([p[0] for p in pairs]).numpy(),
                "fine_tuned": normalise(torch.cat([p[1] for p in pairs]).numpy()),
                "logits_mirrored": torch.cat([p[0] for p in flips]).numpy(),
                "fine_tuned_mirrored": normalise(torch.cat([p[1] for p in flips]).numpy()),
                "frozen": embedded,
                "frozen_dlib_framed": (
                    normalise(_embed(frozen, prep.standardise(framed_images[name])))
                    if name in framed_images
                    else embedded
                ),
                "labels": d.labels.numpy(),
            }
    accuracy = nearest_face_accuracy(features)
    print(
        "nearest training face's class, accuracy: "
        + "; ".join(f"{n}: val {a['val']:.4f}, test {a['test']:.4f}" for n, a in accuracy.items())
        + "\n"
    )
    report: dict = {
        "bundle": str(bundle),
        "target_frr": args.target_frr,
        "nearest_face_accuracy": accuracy,
        "protocols": [],
    }
    for cal_ids, held_ids, cal_half, held_half in (
        (first, second, "first", "second"),
        (second, first, "second", "first"),
    ):
        per_split = {k: v for k, v in features.items() if k in ("train", "val", "test")}
        per_split[CAL], per_split[HELD] = features[cal_half], features[held_half]
        scores = candidate_scores(per_split)
        results, best_fusion = evaluate(scores, args.target_frr)
        title = f"calibrate on {', '.join(cal_ids)}; measure on {', '.join(held_ids)}"
        print(table(results, title) + "\n")
        held = datasets[held_half]
        who = [tree.classes[i] for i in held.labels.tolist()]
        named = [classes[i] for i in features[held_half]["logits"].argmax(1)]
        accepted = {
            name: acceptances(scores[name][HELD], who, named, results[name]["threshold"])
            for name in (SHIPPED, best_fusion)
        }
        for name, per_identity in accepted.items():
            print(breakdown_lines(name, per_identity) + "\n")
        report["protocols"].append(
            {
                "calibration_identities": cal_ids,
                "held_out_identities": held_ids,
                "results": results,
                "held_out_acceptances": accepted,
            }
        )
    if args.json:
        Path(args.json).write_text(json.dumps(report, indent=2) + "\n")
        print(f"wrote {args.json}")
    return 0
