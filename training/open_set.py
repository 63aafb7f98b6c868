"""The "none of the classes" decision: calibrating the shipped score and comparing candidates.

The score itself is defined in ``service.bundle.open_set`` (the service computes it; training fits
it). The protocol never touches the test split or half of the strangers while choosing: the
strangers'
identities are split in two (``split_identities``); the score's fusion weights are fit on the
validation split (known) and the calibration identities (unknown); the threshold rejects at most
a target fraction (default 5 %) of the validation faces, and within that makes the fewest
calibration errors (``THRESHOLD_RULE``); the same figures are then reported on the test split and
the held-out identities.

The study (``python -m training open-set-study``, its table in docs/training.md) adds the
candidates that were compared and not shipped (energy, class centroids, k nearest training faces,
the frozen backbone's embedding, test-time mirroring) and which strangers the threshold lets in
(``acceptances``).
"""

from __future__ import annotations

import numpy as np
from scipy.special import logsumexp
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import roc_auc_score

from service.bundle.open_set import (
    FUSED,
    MAX_SOFTMAX,
    NEAREST_FACE,
    Fusion,
    component_scores,
    normalise,
    threshold_for_operating_point,
    threshold_for_rejection_rate,
)

SHIPPED_PARTS = (MAX_SOFTMAX, NEAREST_FACE)
DEFAULT_TARGET_FRR = 0.05
GALLERY_FILE = "open_set/gallery.npy"
DEFINITION = (
    "fused: sigmoid(bias + sum(weights * (part - mean) / scale)) over the parts in "
    "fusion.components (max_softmax_probability: the largest class probability; "
    "nearest_training_face_cosine: cosine similarity of the embedding to the nearest training "
    "face in the gallery); a logistic regression fit on the calibration side only; higher = "
    "more likely one of the classes"
)

THRESHOLD_RULE = (
    "among the thresholds that reject at most target_false_rejection_rate of the calibration "
    "split's known faces, the one with the fewest calibration errors (false rejection rate + "
    "false acceptance rate of the calibration strangers), the highest of equals"
)


def split_identities(identities: list[str], seed: int) -> tuple[list[str], list[str]]:
    """Strangers' identities -> (calibration half, held-out half), seeded."""
    if len(identities) < 2:
        raise ValueError("need at least two strangers' identities: one to calibrate, one to test")
    order = np.random.default_rng(seed).permutation(len(identities))
    half = len(identities) // 2
    return sorted(identities[i] for i in order[:half]), sorted(identities[i] for i in order[half:])


def rates(known: np.ndarray, unknown: np.ndarray, threshold: float) -> dict:
    """AUROC, the operating point at ``threshold``, and the rates at fixed points of the curve:
    false acceptance at 5 % and 1 % false rejection, false rejection at 10 % and 1 % false
    acceptance (each threshold set on these same scores)."""
    known, unknown = np.asarray(known, np.float64), np.asarray(unknown, np.float64)
    labels = np.r_[np.ones(len(known)), np.zeros(len(unknown))]
    # the threshold accepting at most that share of strangers: the rate-th largest stranger
    far_threshold = {
        r: np.sort(unknown)[::-1][int(np.floor(r * len(unknown)))] for r in (0.1, 0.01)
    }
    return {
        "auroc": float(roc_auc_score(labels, np.r_[known, unknown])),
        "false_rejection_rate": float((known < threshold).mean()),
        "false_acceptance_rate": float((unknown >= threshold).mean()),
        "far_at_frr_5": float((unknown >= threshold_for_rejection_rate(known, 0.05)).mean()),
        "far_at_frr_1": float((unknown >= threshold_for_rejection_rate(known, 0.01)).mean()),
        "frr_at_far_10": float((known <= far_threshold[0.1]).mean()),
        "frr_at_far_1": float((known <= far_threshold[0.01]).mean()),
        "known": int(len(known)),
        "unknown": int(len(unknown)),
    }


def fit_fusion(known: np.ndarray, unknown: np.ndarray, parts: tuple[str, ...]) -> Fusion:
    """Logistic regression (known = 1) on standardised parts, ``(N, len(parts))`` each side."""
    x = np.r_[known, unknown]
    y = np.r_[np.ones(len(known)), np.zeros(len(unknown))]
    mean, scale = x.mean(axis=0), x.std(axis=0)
    scale[scale == 0] = 1.0
    model = LogisticRegression(class_weight="balanced").fit((x - mean) / scale, y)
    return Fusion(
        components=parts,
        mean=tuple(float(v) for v in mean),
        scale=tuple(float(v) for v in scale),
        weights=tuple(float(v) for v in model.coef_[0]),
        bias=float(model.intercept_[0]),
    )


def calibrate(
    outputs: dict[str, tuple[np.ndarray, np.ndarray]],
    calibration_ids: list[str],
    held_out_ids: list[str],
    target_frr: float = DEFAULT_TARGET_FRR,
    parts: tuple[str, ...] = SHIPPED_PARTS,
) -> tuple[dict, np.ndarray]:
    """``outputs``: (logits, embeddings) of ``train``, ``val``, ``test`` (known faces) and of
    ``unknown_calibration``/``unknown_held_out``. Returns meta.json's ``open_set`` block and the
    gallery (normalised training embeddings) to store as ``GALLERY_FILE``."""
    gallery = normalise(outputs["train"][1])
    part_scores = {
        name: component_scores(parts, logits, emb, gallery)
        for name, (logits, emb) in outputs.items()
        if name != "train"
    }
    fusion = fit_fusion(part_scores["val"], part_scores["unknown_calibration"], parts)
    scores = {name: fusion.from_parts(p) for name, p in part_scores.items()}
    threshold = threshold_for_operating_point(
        scores["val"], scores["unknown_calibration"], target_frr
    )
    block = {
        "score": FUSED,
        "definition": DEFINITION,
        "fusion": fusion.to_meta(),
        "gallery": GALLERY_FILE,
        "threshold": round(threshold, 6),
        "target_false_rejection_rate": target_frr,
        "rule": "known when score >= threshold",
        "threshold_rule": THRESHOLD_RULE,
        "calibration_scores": sorted(round(float(s), 6) for s in scores["val"]),
        "calibration_unknown_scores": sorted(
            round(float(s), 6) for s in scores["unknown_calibration"]
        ),
        "calibration": {
            "known_split": "val",
            "unknown_identities": calibration_ids,
            **rates(scores["val"], scores["unknown_calibration"], threshold),
        },
        "held_out": {
            "known_split": "test",
            "unknown_identities": held_out_ids,
            **rates(scores["test"], scores["unknown_held_out"], threshold),
        },
    }
    return block, gallery


def energy(logits: np.ndarray) -> np.ndarray:
    """Negative free energy, ``logsumexp`` of the logits (Liu et al., 2020)."""
    return logsumexp(np.asarray(logits, np.float64), axis=1)


def centroid_cosine(embeddings: np.ndarray, train: np.ndarray, labels: np.ndarray) -> np.ndarray:
    """Cosine similarity to the nearest class centroid of the normalised training embeddings."""
    train = normalise(train)
    centroids = normalise(np.stack([train[labels == c].mean(0) for c in np.unique(labels)]))
    return (normalise(embeddings) @ centroids.T).max(axis=1).astype(np.float64)


def flip_averaged(embeddings: np.ndarray, mirrored: np.ndarray) -> np.ndarray:
    """A face's embedding as the normalised mean of the normalised embeddings of the face and
    of its mirror image: a test-time augmentation that steadies nearest-neighbour scores."""
    return normalise(normalise(embeddings) + normalise(mirrored))


def acceptances(
    scores: np.ndarray, identities: list[str], predicted: list[str], threshold: float
) -> dict[str, dict]:
    """Strangers accepted at ``threshold``, per identity: how many of how many, as which class
    (``predicted``: the class the softmax names) and their highest scores. Tells whether one
    look-alike dominates the false acceptances."""
    out: dict[str, dict] = {}
    for who in sorted(set(identities)):
        rows = [(s, c) for s, i, c in zip(scores, identities, predicted, strict=True) if i == who]
        taken = sorted(((float(s), c) for s, c in rows if s >= threshold), reverse=True)
        as_class: dict[str, int] = {}
        for _, c in taken:
            as_class[c] = as_class.get(c, 0) + 1
        out[who] = {
            "accepted": len(taken),
            "of": len(rows),
            "as": dict(sorted(as_class.items(), key=lambda kv: -kv[1])),
            "top_scores": [round(s, 3) for s, _ in taken[:3]],
        }
    return out


def class_margin(embeddings: np.ndarray, train: np.ndarray, labels: np.ndarray) -> np.ndarray:
    """The nearest training face's cosine similarity minus that of the nearest face of any other
    class: a stranger who looks a little like several of the classes has a small margin even
    when one training face is close (needs the gallery's class labels)."""
    similarity = normalise(embeddings) @ normalise(train).T
    per_class = np.stack([similarity[:, labels == c].max(1) for c in np.unique(labels)], 1)
    ordered = np.sort(per_class, axis=1)
    return (ordered[:, -1] - ordered[:, -2]).astype(np.float64)


def knn_cosine(embeddings: np.ndarray, train: np.ndarray, k: int) -> np.ndarray:
    """Cosine similarity to the k-th nearest training face (Sun et al., 2022)."""
    similarity = normalise(embeddings) @ normalise(train).T
    return np.sort(similarity, axis=1)[:, -k].astype(np.float64)
