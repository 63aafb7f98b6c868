"""The "none of the 8" decision: is this face one of the classes at all?

A softmax always names a class, even for a stranger. The score used here is the maximum softmax
probability (Hendrycks & Gimpel, 2017): on this data it separates the classes from strangers as
well as distances in the embedding space (nearest class centroid, k nearest training faces) and
needs nothing in the bundle beyond the logits. A face counts as *known* when the score is at least
the threshold.

Calibration never touches the test split: the threshold maximises Youden's J (true acceptance
minus false acceptance) on the validation split (known) and on half of the strangers' identities
(unknown); AUROC and the rates at that threshold are then reported on the test split and on the
other, unseen half of the strangers.
"""

from __future__ import annotations

import numpy as np
from sklearn.metrics import roc_auc_score, roc_curve

SCORE = "max_softmax_probability"


def max_softmax(logits: np.ndarray) -> np.ndarray:
    """(N, C) logits -> (N,) largest class probability."""
    shifted = logits - logits.max(axis=1, keepdims=True)
    p = np.exp(shifted)
    return (p / p.sum(axis=1, keepdims=True)).max(axis=1)


def split_identities(identities: list[str], seed: int) -> tuple[list[str], list[str]]:
    """Strangers' identities -> (calibration half, held-out half), seeded."""
    if len(identities) < 2:
        raise ValueError("need at least two strangers' identities: one to calibrate, one to test")
    order = np.random.default_rng(seed).permutation(len(identities))
    half = len(identities) // 2
    return sorted(identities[i] for i in order[:half]), sorted(identities[i] for i in order[half:])


def choose_threshold(known: np.ndarray, unknown: np.ndarray) -> float:
    """The score threshold that maximises Youden's J on these scores."""
    labels = np.r_[np.ones(len(known)), np.zeros(len(unknown))]
    fpr, tpr, thresholds = roc_curve(labels, np.r_[known, unknown])
    best = int(np.argmax(tpr - fpr))
    return float(min(thresholds[best], 1.0))


def rates(known: np.ndarray, unknown: np.ndarray, threshold: float) -> dict:
    """AUROC (known vs unknown) and the operating point at ``threshold``."""
    labels = np.r_[np.ones(len(known)), np.zeros(len(unknown))]
    return {
        "auroc": float(roc_auc_score(labels, np.r_[known, unknown])),
        "false_rejection_rate": float((known < threshold).mean()),
        "false_acceptance_rate": float((unknown >= threshold).mean()),
        "known": int(len(known)),
        "unknown": int(len(unknown)),
    }


def calibrate(
    scores: dict[str, np.ndarray], calibration_ids: list[str], held_out_ids: list[str]
) -> dict:
    """``scores``: ``val``/``test`` (known faces) and ``unknown_calibration``/``unknown_held_out``.
    Returns meta.json's ``open_set`` block."""
    threshold = choose_threshold(scores["val"], scores["unknown_calibration"])
    return {
        "score": SCORE,
        "threshold": round(threshold, 6),
        "rule": "known when score >= threshold",
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
