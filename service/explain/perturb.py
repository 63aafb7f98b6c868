"""What perturbation methods share: baseline images and batched scoring on a forward function."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING, Literal

import numpy as np
from scipy.ndimage import gaussian_filter

from service.common.cancellation import Cancellation
from service.explain.base import MethodParams
from service.explain.objective import Objective, Score

Baseline = Literal["zero", "mean", "blur"]
BASELINE_HELP = (
    "zero = 0 in model-input space, i.e. the normalisation mean colour (a flat grey-brown); "
    "mean = the image's own mean colour; blur = the image under a Gaussian blur "
    "(sigma = 5% of its side)"
)
BLUR_SIGMA_FRACTION = 0.05
SCORE_HELP = (
    "the score that perturbations change: probability or logit. For a class: its softmax "
    "probability (bounded, but flat where the model is very sure) or its logit; default "
    "probability. For a contrast: the target's probability between the two classes or the "
    "logit gap; for target=open_set: the open-set score or its log-odds; default logit for "
    "both (a contrast is a difference of logits, and the open-set score is flat near 0 for "
    "every stranger)"
)


def score_kind(asked: Score | None, objective: Objective) -> Score:
    """The score flavour a perturbation method watches: as ``asked``, else probability for a
    class and logit for a contrast or the open-set score (``SCORE_HELP``)."""
    if asked is not None:
        return asked
    return "probability" if objective.kind == "class" else "logit"


class PerturbationParams(MethodParams):
    """Base of the parameters of the methods that score perturbed copies of the input on the
    forward function (occlusion, LIME, RISE): each has a ``baseline`` (what removed pixels
    show), a ``score`` (what the perturbations change) and a ``batch_size`` (copies per pass).

    Each method declares those three fields itself, in its own words and after its own
    parameters (pydantic lists a base's fields first, and the API lists them in that order);
    they are named here so that code shared by the three can rely on them."""

    if TYPE_CHECKING:
        baseline: Baseline
        score: Score | None
        batch_size: int


def baseline_image(x: np.ndarray, kind: Baseline) -> np.ndarray:
    """The uninformative ``(3, H, W)`` float32 image that stands in for removed pixels of ``x``."""
    if kind == "zero":
        return np.zeros_like(x)
    if kind == "mean":
        return np.broadcast_to(x.mean(axis=(1, 2), keepdims=True), x.shape).astype(np.float32)
    if kind == "blur":
        sigma = BLUR_SIGMA_FRACTION * max(x.shape[1:])
        return gaussian_filter(x, sigma=(0, sigma, sigma), mode="nearest").astype(np.float32)
    raise ValueError(f"unknown baseline {kind!r}; valid: zero, mean, blur")


def batch_buffer(batch_size: int, shape: tuple[int, ...]) -> np.ndarray:
    """One float32 array to build every batch of one explanation's perturbed images in: each
    batch is scored before the next is built (``target_scores``), so one array serves them all.
    A fresh array per batch cost more than the building: arrays over 1 MiB are mapped afresh
    and given back to the system when freed (``service.inference.allocator``), and faulting in
    their pages made building and scoring LIME's 7 batches of 32 a quarter slower."""
    return np.empty((batch_size, *shape), dtype=np.float32)


def blend(
    shown: np.ndarray, mask: np.ndarray, hidden: np.ndarray, out: np.ndarray | None = None
) -> np.ndarray:
    """``(N, 3, H, W)`` float32 images that show ``shown`` where ``mask`` ``(N, H, W)`` is 1
    and ``hidden`` where it is 0 (both ``(3, H, W)``): ``hidden + mask * (shown - hidden)``,
    so a soft mask in between mixes them (RISE). Twice as fast as ``np.where`` over the
    broadcast images; shown pixels may differ from ``shown`` in the last bit. ``out``: a
    ``batch_buffer`` of at least N rows to build them in (its first N rows are returned)."""
    images = batch_buffer(len(mask), shown.shape) if out is None else out[: len(mask)]
    np.multiply(mask[:, None], shown - hidden, out=images)
    images += hidden
    return images


def target_scores(
    scorer: Callable[[np.ndarray], np.ndarray],
    make_batch: Callable[[int, int], np.ndarray],
    count: int,
    batch_size: int,
    cancellation: Cancellation | None = None,
    on_batch: Callable[[int, np.ndarray], None] | None = None,
    done: Callable[[int, np.ndarray], bool] | None = None,
) -> np.ndarray:
    """The objective's scores (``scorer``: ``Explainer.scorer``) of ``count`` perturbed inputs,
    ``batch_size`` per forward pass.

    ``make_batch(start, stop)`` builds inputs ``start..stop-1`` as ``(stop - start, 3, H, W)``
    float32, so only one batch is in memory at a time. Returns ``(count,)`` float64.
    ``Cancelled`` before the next batch once ``cancellation`` is cancelled. ``on_batch(stop,
    scores)`` after each batch: ``scores[:stop]`` are known (for a partial map). ``done(stop,
    scores)`` after each batch but the last: True ends the scoring there (``stop=converged``),
    and only ``scores[:stop]`` are returned.
    """
    scores = np.empty(count, dtype=np.float64)
    for start, stop in batch_bounds(count, batch_size):
        if cancellation is not None:
            cancellation.check()
        scores[start:stop] = scorer(make_batch(start, stop))
        if done is not None and stop < count and done(stop, scores):
            return scores[:stop]
        if on_batch is not None and stop < count:
            on_batch(stop, scores)
    return scores


def batch_bounds(count: int, batch_size: int) -> Iterator[tuple[int, int]]:
    for start in range(0, count, batch_size):
        yield start, min(start + batch_size, count)
