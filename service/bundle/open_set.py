"""The "none of the classes" score: one definition, used by training to calibrate it and by the
service to compute it, so the two cannot drift apart.

A softmax always names a class, even for a stranger. The score says whether to believe it:
higher means more likely one of the classes. Its parts (``COMPONENTS``) read the logits and the
model's embedding (the layer before the head, an ONNX output of its own):

- ``max_softmax_probability``: the largest class probability (Hendrycks & Gimpel, 2017);
- ``max_logit``: the largest logit (Vaze et al., 2022);
- ``nearest_training_face_cosine``: cosine similarity of the L2-normalised embedding to the
  nearest training face, a gallery of normalised training embeddings shipped in the bundle
  (k-NN with k = 1, Sun et al., 2022).

The shipped score fuses parts with a logistic regression fit on calibration data only:
``sigmoid(bias + sum(weight_i * (part_i - mean_i) / scale_i))``, in [0, 1].

The threshold is stated as an operating point: a target false rejection rate, the most known
faces of the calibration split it may reject; among the thresholds within it, the one with the
fewest calibration errors, strangers included (``threshold_for_operating_point``). The bundle
keeps the calibration scores of both sides, so the target can move without retraining.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np

from service.bundle.format import BundleError, BundleMeta
from service.common.softmax import softmax

log = logging.getLogger(__name__)

MAX_SOFTMAX = "max_softmax_probability"
MAX_LOGIT = "max_logit"
NEAREST_FACE = "nearest_training_face_cosine"
FUSED = "fused"


def normalise(embeddings: np.ndarray) -> np.ndarray:
    """Rows scaled to unit length (float32): cosine similarity becomes a dot product."""
    embeddings = np.asarray(embeddings, dtype=np.float32)
    norms = np.linalg.norm(embeddings, axis=1, keepdims=True)
    return embeddings / np.maximum(norms, 1e-12)


def max_softmax(logits: np.ndarray, embeddings: np.ndarray, gallery: np.ndarray) -> np.ndarray:
    return softmax(np.asarray(logits)).max(axis=1)


def max_logit(logits: np.ndarray, embeddings: np.ndarray, gallery: np.ndarray) -> np.ndarray:
    return np.asarray(logits, dtype=np.float64).max(axis=1)


def nearest_face(logits: np.ndarray, embeddings: np.ndarray, gallery: np.ndarray) -> np.ndarray:
    return (normalise(embeddings) @ gallery.T).max(axis=1).astype(np.float64)


COMPONENTS: dict[str, Callable[[np.ndarray, np.ndarray, np.ndarray], np.ndarray]] = {
    MAX_SOFTMAX: max_softmax,
    MAX_LOGIT: max_logit,
    NEAREST_FACE: nearest_face,
}
NEEDS_GALLERY = {NEAREST_FACE}


@dataclass(frozen=True)
class Fusion:
    """A logistic regression over standardised parts: ``sigmoid(bias + w . (x - mean) / scale)``."""

    components: tuple[str, ...]
    mean: tuple[float, ...]
    scale: tuple[float, ...]
    weights: tuple[float, ...]
    bias: float

    def __call__(
        self, logits: np.ndarray, embeddings: np.ndarray | None, gallery: np.ndarray | None
    ) -> np.ndarray:
        """(N,) fused scores in [0, 1] for a batch of logits and embeddings."""
        return self.from_parts(component_scores(self.components, logits, embeddings, gallery))

    def from_parts(self, parts: np.ndarray) -> np.ndarray:
        """(N, len(components)) part scores -> (N,) fused scores."""
        z = (parts - np.asarray(self.mean)) / np.asarray(self.scale)
        return 1.0 / (1.0 + np.exp(-(z @ np.asarray(self.weights) + self.bias)))

    def to_meta(self) -> dict:
        return {
            "components": list(self.components),
            "mean": list(self.mean),
            "scale": list(self.scale),
            "weights": list(self.weights),
            "bias": self.bias,
        }


def component_scores(
    names: Sequence[str],
    logits: np.ndarray,
    embeddings: np.ndarray | None,
    gallery: np.ndarray | None,
) -> np.ndarray:
    """(N, len(names)) parts; an embedding part needs ``embeddings`` and the ``gallery``."""
    unknown = [name for name in names if name not in COMPONENTS]
    if unknown:
        raise ValueError(f"unknown score part(s) {unknown}; known: {sorted(COMPONENTS)}")
    if set(names) & NEEDS_GALLERY and (embeddings is None or gallery is None):
        raise ValueError(f"{sorted(set(names) & NEEDS_GALLERY)} need embeddings and a gallery")
    empty = np.zeros((0, 1), np.float32)
    columns = [
        COMPONENTS[name](
            logits,
            empty if embeddings is None else embeddings,
            empty if gallery is None else gallery,
        )
        for name in names
    ]
    return np.stack(columns, axis=1).astype(np.float64)


def threshold_for_rejection_rate(
    known_scores: Sequence[float] | np.ndarray, target: float
) -> float:
    """The largest threshold (``known when score >= threshold``) that rejects at most ``target``
    of ``known_scores``: the ``floor(target * n)``-th smallest score (ties may reject fewer)."""
    if not 0 <= target < 1:
        raise ValueError(f"a target false rejection rate must be in [0, 1), got {target}")
    ordered = np.sort(np.asarray(known_scores, dtype=np.float64))
    if len(ordered) == 0:
        raise ValueError("no calibration scores to set a threshold from")
    return float(ordered[int(np.floor(target * len(ordered)))])


def threshold_for_operating_point(
    known_scores: Sequence[float] | np.ndarray,
    unknown_scores: Sequence[float] | np.ndarray | None,
    target: float,
) -> float:
    """The operating point for a target false rejection rate: among the thresholds that reject
    at most ``target`` of ``known_scores`` (up to ``threshold_for_rejection_rate``), the one
    with the fewest calibration errors -- false rejection rate plus false acceptance rate of
    ``unknown_scores`` (strangers) -- the highest of equals. Where the strangers' scores lie
    well below the target's threshold, it rejects fewer known faces than the target allows at
    no cost in strangers let in. Without strangers' scores: the target's threshold."""
    cap = threshold_for_rejection_rate(known_scores, target)
    if unknown_scores is None or len(unknown_scores) == 0:
        return cap
    known = np.asarray(known_scores, dtype=np.float64)
    unknown = np.asarray(unknown_scores, dtype=np.float64)
    candidates = np.unique(np.r_[known, unknown, cap])
    candidates = candidates[candidates <= cap]
    errors = (known[None] < candidates[:, None]).mean(1) + (
        unknown[None] >= candidates[:, None]
    ).mean(1)
    return float(candidates[np.flatnonzero(errors == errors.min())[-1]])


@dataclass(frozen=True)
class OpenSetRule:
    """The decision as served: the score, and the threshold for the target false rejection rate
    (the bundle's, or the operator's ``open_set_target_frr``, which ``threshold_source`` names)."""

    score: str
    threshold: float
    target_false_rejection_rate: float | None
    threshold_source: str
    fusion: Fusion | None = None
    gallery: np.ndarray | None = None

    def __call__(self, logits: np.ndarray, embedding: np.ndarray | None) -> float:
        """The score of one face from its ``(C,)`` logits and ``(D,)`` embedding."""
        batch = np.asarray(logits)[None]
        emb = None if embedding is None else np.asarray(embedding)[None]
        if self.fusion is not None:
            return float(self.fusion(batch, emb, self.gallery)[0])
        return float(component_scores([self.score], batch, emb, self.gallery)[0, 0])


def open_set_rule(
    meta: BundleMeta, gallery: np.ndarray | None, target_frr: float | None
) -> OpenSetRule | None:
    """The served open-set decision: the bundle's threshold, or the operating point for
    ``target_frr`` on the bundle's calibration scores (no retraining needed)."""
    spec = meta.open_set
    if spec is None:
        if target_frr is not None:
            log.warning("open_set_target_frr is set, but the bundle has no open-set calibration")
        return None
    threshold, source, target = spec.threshold, "bundle", spec.target_false_rejection_rate
    if target_frr is not None:
        if not spec.calibration_scores:
            raise BundleError(
                "open_set_target_frr is set, but meta.json open_set stores no "
                "calibration_scores to move the threshold with (retrain or unset it)"
            )
        threshold = threshold_for_operating_point(
            spec.calibration_scores, spec.calibration_unknown_scores, target_frr
        )
        source, target = "setting", target_frr
    fusion = None
    if spec.fusion is not None:
        f = spec.fusion
        fusion = Fusion(
            tuple(f.components), tuple(f.mean), tuple(f.scale), tuple(f.weights), f.bias
        )
    log.info(
        "open set: %s >= %.6f (target false rejection rate %s, from the %s)",
        spec.score,
        threshold,
        target,
        source,
    )
    return OpenSetRule(spec.score, threshold, target, source, fusion, gallery)
