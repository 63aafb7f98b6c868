"""Labelled face images from a ``<root>/<class_id>/*.{jpg,jpeg,png,webp}`` tree.

``scan`` finds the files, ``split`` makes a seeded, stratified train/val/test split, and
``FaceDataset`` decodes every image once (resized per ``Preprocessing``) and keeps it in memory:
a few thousand 150x150 faces are ~100 MB and decoding them every epoch would dominate a CPU run.
"""

from __future__ import annotations

import copy
import logging
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError
from torch.utils.data import Dataset
from tqdm import tqdm

from training.preprocess import Preprocessing

log = logging.getLogger(__name__)

IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".webp"}
SPLITS = ("train", "val", "test")


class DataError(ValueError):
    """The image tree cannot be used (missing, empty, or a class without images)."""


@dataclass
class ImageTree:
    root: Path
    classes: list[str]
    samples: list[tuple[str, int]]  # (path relative to root, class index)
    skipped: list[str] = field(default_factory=list)

    def counts(self, samples: list[tuple[str, int]] | None = None) -> dict[str, int]:
        labels = [label for _, label in (self.samples if samples is None else samples)]
        return {name: labels.count(i) for i, name in enumerate(self.classes)}


def _is_image(path: Path) -> bool:
    try:
        with Image.open(path) as image:
            image.verify()
        return True
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError):
        return False


def scan(root: str | Path) -> ImageTree:
    """Find the images of every class folder (sorted by name: that order is the logit order).

    Files with another suffix are ignored; files with an image suffix that do not decode are
    skipped with a warning and listed in ``skipped``. Raises ``DataError`` for a missing or empty
    root and for a class folder without a usable image.
    """
    root = Path(root)
    if not root.is_dir():
        raise DataError(f"data root {root} is not a directory")
    classes = sorted(p.name for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))
    if not classes:
        raise DataError(f"data root {root} has no class folders (expected <root>/<class_id>/*.jpg)")
    samples, skipped = [], []
    for index, name in enumerate(classes):
        files = sorted(p for p in (root / name).iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
        good = []
        for path in files:
            rel = path.relative_to(root).as_posix()
            if _is_image(path):
                good.append(rel)
            else:
                log.warning("skipping unreadable image %s", path)
                skipped.append(rel)
        if not good:
            raise DataError(f"class folder {root / name} has no readable images")
        samples += [(rel, index) for rel in good]
    if skipped:
        log.warning("skipped %d unreadable file(s) under %s", len(skipped), root)
    return ImageTree(root, classes, samples, skipped)


def split(
    tree: ImageTree, *, val: float = 0.15, test: float = 0.15, seed: int = 0
) -> dict[str, list[tuple[str, int]]]:
    """Stratified split: per class, a seeded shuffle, then ``test`` and ``val`` fractions
    (at least one image each) and the rest for training."""
    if not (0 < val < 1 and 0 < test < 1 and val + test < 1):
        raise DataError(
            f"val ({val}) and test ({test}) must be fractions in (0, 1) summing below 1"
        )
    rng = np.random.default_rng(seed)
    parts: dict[str, list[tuple[str, int]]] = {name: [] for name in SPLITS}
    for index, name in enumerate(tree.classes):
        items = [s for s in tree.samples if s[1] == index]
        if len(items) < 3:
            raise DataError(
                f"class {name!r} has {len(items)} images; at least 3 are needed to split"
            )
        order = rng.permutation(len(items))
        n_test = max(1, round(len(items) * test))
        n_val = max(1, round(len(items) * val))
        parts["test"] += [items[i] for i in order[:n_test]]
        parts["val"] += [items[i] for i in order[n_test : n_test + n_val]]
        parts["train"] += [items[i] for i in order[n_test + n_val :]]
    return parts


class FaceDataset(Dataset):
    """In-memory images: item ``i`` is ``(transform(image) (3, H, W) uint8, label)``."""

    def __init__(
        self, root: Path, samples, prep: Preprocessing, transform=None, desc: str = ""
    ) -> None:
        self.root = Path(root)
        self.samples = list(samples)
        self.labels = torch.tensor([label for _, label in self.samples], dtype=torch.long)
        images = [
            prep.load(root / rel)
            for rel, _ in tqdm(self.samples, desc=f"decode {desc}", leave=False)
        ]
        self.images = torch.from_numpy(np.stack(images)).permute(0, 3, 1, 2).contiguous()
        self.transform = transform

    def with_transform(self, transform) -> FaceDataset:
        """The same images (shared, not copied) under another transform."""
        view = copy.copy(self)
        view.transform = transform
        return view

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, int]:
        image = self.images[i]
        return (self.transform(image) if self.transform else image), int(self.labels[i])


def class_weights(labels: torch.Tensor, num_classes: int) -> torch.Tensor:
    """Inverse-frequency weights (mean 1) for a class-balanced cross-entropy."""
    counts = torch.bincount(labels, minlength=num_classes).float().clamp(min=1)
    weights = counts.sum() / (num_classes * counts)
    return weights / weights.mean()
