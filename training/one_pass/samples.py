"""What the explainer learns from: masked faces and the model's logits on them.

A coalition ``S`` is a ``(G, G)`` binary grid over the model input (1: the cell is shown, 0:
hidden behind the deletion baseline, model input 0, as the quality report deletes pixels).
Coalitions are drawn from the Shapley kernel (a size ``k`` in ``1..d-1`` with probability
proportional to ``(d - 1) / (k (d - k))``, then ``k`` cells uniformly), in antithetic pairs
(a coalition and its complement), from a fixed seed: FastSHAP's sampling (Jethani et al. 2022,
Covert & Lee 2021). Every face's logits under its coalitions are computed once here, so the
head's training never runs the model again; the cost is ``faces * masks`` forward passes.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

from service.bundle.framing import framed
from service.bundle.preprocess import Preprocessor
from service.explain.faithfulness import DELETION_BASELINE
from service.explain.perturb import baseline_image

log = logging.getLogger(__name__)

Forward = Callable[[np.ndarray], np.ndarray]
"""``(N, 3, H, W)`` float32 model input -> ``(N, C)`` logits."""
Features = Callable[[np.ndarray], np.ndarray]
"""``(N, 3, H, W)`` float32 model input -> ``(N, K, G, G)`` trunk features."""


@dataclass(frozen=True)
class Samples:
    """Faces with their coalitions and values, all float32 unless said.

    - ``features``: ``(N, K, G, G)`` the frozen trunk's activation of each face;
    - ``logits``: ``(N, C)`` the model on each face (the grand coalition's value);
    - ``coalitions``: ``(N, M, G * G)`` 0/1, cells shown;
    - ``values``: ``(N, M, C)`` the model's logits on each masked face;
    - ``labels``: ``(N,)`` int64 true classes.
    """

    features: np.ndarray
    logits: np.ndarray
    coalitions: np.ndarray
    values: np.ndarray
    labels: np.ndarray

    def subset(self, index: np.ndarray) -> Samples:
        return Samples(
            self.features[index],
            self.logits[index],
            self.coalitions[index],
            self.values[index],
            self.labels[index],
        )


def split_faces(
    bundle: Path, images: Path, split: str, preprocess: Preprocessor, limit: int | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """``split``'s faces of ``bundle/split.json`` read from ``images``: ``(N, 3, H, W)`` model
    inputs and ``(N,)`` labels; with ``limit``, that many spread evenly over the split. Each
    photo is cut to the bundle's framing box first, as the service does with a face crop sent
    whole (and as the model was trained): the explainer learns and is gated on the inputs the
    service feeds it."""
    items = json.loads((bundle / "split.json").read_text())["splits"][split]
    if limit is not None and limit < len(items):
        items = [items[i] for i in np.linspace(0, len(items) - 1, limit).round().astype(int)]
    framing = preprocess.spec.framing
    photos = [Image.open(images / path).convert("RGB") for path, _ in items]
    inputs = [preprocess(framed(photo, framing)) for photo in photos]
    return np.stack(inputs).astype(np.float32), np.array([label for _, label in items])


def kernel_coalitions(rng: np.random.Generator, faces: int, masks: int, players: int) -> np.ndarray:
    """``(faces, masks, players)`` float32 0/1 coalitions from the Shapley kernel, antithetic:
    the second half of each face's masks are the complements of the first (``masks`` even)."""
    if masks < 2 or masks % 2:
        raise ValueError(f"masks per face must be even and at least 2, not {masks}")
    sizes = np.arange(1, players)
    weights = (players - 1) / (sizes * (players - sizes))
    drawn = rng.choice(sizes, size=(faces, masks // 2), p=weights / weights.sum())
    order = rng.random((faces, masks // 2, players)).argsort(axis=-1)
    half = (order < drawn[..., None]).astype(np.float32)  # the first k of a random order
    return np.concatenate([half, 1.0 - half], axis=1)


def cell_masks(coalitions: np.ndarray, grid: int, side: tuple[int, int]) -> np.ndarray:
    """``(..., G * G)`` coalitions -> ``(..., H, W)`` pixel masks: each pixel takes the value of
    the grid cell it lies in (cell ``i`` covers rows ``floor(i H / G)`` up to the next)."""
    height, width = side
    rows = np.arange(height) * grid // height
    cols = np.arange(width) * grid // width
    cells = coalitions.reshape(*coalitions.shape[:-1], grid, grid)
    return cells[..., rows[:, None], cols[None, :]]


def masked_values(
    forward: Forward,
    x: np.ndarray,
    coalitions: np.ndarray,
    grid: int,
    batch_size: int,
) -> np.ndarray:
    """``(M, C)`` logits of one face ``x`` ``(3, H, W)`` with the cells of each of ``coalitions``
    ``(M, G * G)`` shown and the others at the deletion baseline."""
    baseline = baseline_image(x, DELETION_BASELINE)
    out = []
    for start in range(0, len(coalitions), batch_size):
        masks = cell_masks(coalitions[start : start + batch_size], grid, x.shape[1:])
        batch = baseline + (x - baseline) * masks[:, None]
        out.append(np.asarray(forward(batch.astype(np.float32)), dtype=np.float32))
    return np.concatenate(out)


def make_samples(
    forward: Forward,
    features: Features,
    inputs: np.ndarray,
    labels: np.ndarray,
    *,
    grid: int,
    masks: int,
    seed: int,
    batch_size: int = 32,
    name: str = "faces",
) -> Samples:
    """Every face's trunk features, logits and ``masks`` coalitions' values (``Samples``),
    with progress logged about every 10 %."""
    rng = np.random.default_rng(seed)
    coalitions = kernel_coalitions(rng, len(inputs), masks, grid * grid)
    feats, logits, values = [], [], []
    started, every = time.perf_counter(), max(1, len(inputs) // 10)
    for start in range(0, len(inputs), batch_size):
        batch = inputs[start : start + batch_size]
        feats.append(np.asarray(features(batch), dtype=np.float32))
        logits.append(np.asarray(forward(batch), dtype=np.float32))
    for index, x in enumerate(inputs):
        values.append(masked_values(forward, x, coalitions[index], grid, batch_size))
        if (index + 1) % every == 0 or index + 1 == len(inputs):
            log.info(
                "%s: %d/%d scored under %d masks each (%.0f s)",
                name,
                index + 1,
                len(inputs),
                masks,
                time.perf_counter() - started,
            )
    return Samples(
        np.concatenate(feats),
        np.concatenate(logits),
        coalitions,
        np.stack(values),
        np.asarray(labels, dtype=np.int64),
    )


def check_grid(features: np.ndarray, grid: int, layer: str) -> None:
    """The trunk's activation must be ``grid x grid``: each output cell sits on one of its
    cells."""
    if features.shape[-2:] != (grid, grid):
        raise ValueError(
            f"the trunk's {layer} is {features.shape[-2]}x{features.shape[-1]}, not the "
            f"{grid}x{grid} grid asked for; choose a layer of that size"
        )
