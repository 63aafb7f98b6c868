"""``python -m training insight``: what a bundle's channels respond to, stored beside it.

For every channel of a few layers, the training images whose activation peaks highest, one patch
per image (the unit at the peak, cropped to its receptive field), as in Zeiler & Fergus (2014).
Only the bundle's own twin (model.pt2) and its split.json *train* split are used; the result goes
to ``<bundle>/insight/`` in the format of ``service.insight.patches`` and is listed in meta.json
(``files`` with sha256, and an ``insight`` block). model.onnx and model.pt2 are not touched.

Layers: by default those in which a unit sees only part of the input (``ReceptiveField.local``):
for the dlib ResNet ``stem``, ``layer1`` and ``layer2``, with receptive fields of 11, 59 and 179
pixels of the 150-pixel input. From ``layer3`` on even a corner unit sees the whole input, so
every "patch" would be the whole face; ``/insight/maximize`` shows those channels better.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from tqdm import tqdm

from service.bundle.checks import load_twin, sha256_of
from service.bundle.format import META_FILE, TWIN_FILE, read_meta
from service.insight.architecture import ReceptiveField, receptive_fields
from service.insight.patches import (
    INDEX_NAME,
    INSIGHT_DIR,
    MAX_TILE,
    InsightBlock,
    LayerPatches,
    Patch,
    TopPatchIndex,
    save_sprite,
    sprite_name,
)
from training.data import FaceDataset
from training.preprocess import Preprocessing

log = logging.getLogger(__name__)

PER_CHANNEL = 9
BATCH_SIZE = 32


def peak_units(
    twin: torch.nn.Module, images: torch.Tensor, prep: Preprocessing, layers: list[str]
) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """Per layer, every image's largest activation per channel and where it is.

    ``images``: ``(N, 3, H, W)`` uint8. Returns ``{layer: (values (N, C) float32, positions
    (N, C) int64)}``, a position being ``row * width + col`` in the layer's map (the first one
    on ties).
    """
    peaks: dict[str, list] = {layer: [] for layer in layers}
    with torch.no_grad():
        for start in tqdm(range(0, len(images), BATCH_SIZE), desc="activations", leave=False):
            _, activations = twin(prep.standardise(images[start : start + BATCH_SIZE]))
            for layer in layers:
                values, positions = activations[layer].flatten(2).max(dim=2)
                peaks[layer].append((values.numpy(), positions.numpy()))
    return {
        layer: (np.concatenate([v for v, _ in found]), np.concatenate([p for _, p in found]))
        for layer, found in peaks.items()
    }


def top_images(values: np.ndarray, k: int) -> np.ndarray:
    """``(N, C)`` peak values -> ``(C, k)`` image indices, strongest first (ties: lower index)."""
    order = np.argsort(-values, axis=0, kind="stable")[:k]
    return order.T


def crop_field(
    image: np.ndarray, box: tuple[int, int, int, int], fill: tuple[int, int, int]
) -> np.ndarray:
    """``image`` ``(H, W, 3)`` uint8 cut to ``box`` = ``(x0, y0, x1, y1)`` (end exclusive), which
    may reach outside: that part is ``fill``."""
    x0, y0, x1, y1 = box
    height, width = image.shape[:2]
    patch = np.empty((y1 - y0, x1 - x0, 3), dtype=np.uint8)
    patch[:] = fill
    sx0, sy0, sx1, sy1 = max(x0, 0), max(y0, 0), min(x1, width), min(y1, height)
    if sx1 > sx0 and sy1 > sy0:
        patch[sy0 - y0 : sy1 - y0, sx0 - x0 : sx1 - x0] = image[sy0:sy1, sx0:sx1]
    return patch


def layer_patches(
    field: ReceptiveField,
    values: np.ndarray,
    positions: np.ndarray,
    dataset: FaceDataset,
    classes: list[str],
    per_channel: int,
    fill: tuple[int, int, int],
) -> tuple[LayerPatches, np.ndarray]:
    """The index entry and the sprite ``(C * tile, per_channel * tile, 3)`` of one layer."""
    size = field.rows.size
    tile = min(size, MAX_TILE)
    chosen = top_images(values, per_channel)
    channels, count = values.shape[1], chosen.shape[1]
    sprite = np.zeros((channels * tile, count * tile, 3), dtype=np.uint8)
    width = field.shape[2]
    entries = []
    for channel in range(channels):
        row_entries = []
        for k, index in enumerate(chosen[channel]):
            row, col = divmod(int(positions[index, channel]), width)
            box = field.box(row, col)
            image = dataset.images[index].permute(1, 2, 0).numpy()
            patch = Image.fromarray(crop_field(image, box, fill))
            if tile != size:
                patch = patch.resize((tile, tile), Image.Resampling.BILINEAR)
            sprite[channel * tile : (channel + 1) * tile, k * tile : (k + 1) * tile] = np.asarray(
                patch
            )
            rel, label = dataset.samples[index]
            row_entries.append(
                Patch(
                    image=rel,
                    label=classes[label],
                    row=row,
                    col=col,
                    activation=round(float(values[index, channel]), 5),
                    box=box,
                )
            )
        entries.append(row_entries)
    return LayerPatches(
        sprite=sprite_name(field.layer, tile), tile=tile, field_size=size, channels=entries
    ), sprite


def write_insight(
    bundle: Path,
    data_root: Path | None = None,
    layers: tuple[str, ...] | None = None,
    per_channel: int = PER_CHANNEL,
    limit: int | None = None,
) -> dict:
    """Compute the top patches of ``bundle`` and store them in it; returns the ``insight``
    block written to meta.json.

    ``data_root``: where the split's images are (default: the root split.json records).
    ``layers``: default: every layer whose units see only part of the input.
    ``limit``: use only the first this many training images (quick runs and tests).
    """
    bundle = Path(bundle)
    meta = read_meta(bundle)  # checked as the service checks it
    split = json.loads((bundle / "split.json").read_text())
    twin = load_twin(bundle)
    fields = receptive_fields(twin)
    layers = tuple(layers or (name for name, field in fields.items() if field.local))
    unknown = [layer for layer in layers if layer not in fields]
    if unknown:
        raise ValueError(f"unknown layer(s) {unknown}; the bundle's layers are {', '.join(fields)}")
    prep = Preprocessing.from_meta(meta.input.model_dump())
    classes = [c.id for c in meta.classes]
    samples = [tuple(s) for s in split["splits"]["train"]][:limit]
    root = Path(data_root or split["root"])
    if len(samples) < per_channel:
        raise ValueError(
            f"{len(samples)} training images are fewer than --per-channel {per_channel}"
        )

    dataset = FaceDataset(root, samples, prep, desc="train")
    log.info("insight: %d training images, layers %s", len(dataset), ", ".join(layers))
    peaks = peak_units(twin, dataset.images, prep, list(layers))
    red, green, blue = prep.mean
    fill = (round(red), round(green), round(blue))

    tmp = bundle / f".{INSIGHT_DIR}.tmp-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    try:
        stored = {}
        for layer in layers:
            entry, sprite = layer_patches(
                fields[layer], *peaks[layer], dataset, classes, per_channel, fill
            )
            save_sprite(sprite, tmp / entry.sprite)
            stored[layer] = entry
        index = TopPatchIndex(
            images=len(dataset),
            per_channel=per_channel,
            model_sha256=meta.files[TWIN_FILE].sha256,
            layers=stored,
        )
        (tmp / INDEX_NAME).write_text(index.model_dump_json() + "\n")
        block = InsightBlock(
            top_patches=f"{INSIGHT_DIR}/{INDEX_NAME}",
            layers=list(layers),
            per_channel=per_channel,
            images=len(dataset),
            created_at=datetime.now(UTC).isoformat(timespec="seconds"),
        ).model_dump()
        # rewritten from the file itself, so every other key stays exactly as it was
        _replace_insight(bundle, tmp, json.loads((bundle / META_FILE).read_text()), block)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return block


def _replace_insight(bundle: Path, new_dir: Path, meta: dict, block: dict) -> None:
    """Swap ``new_dir`` in as ``<bundle>/insight`` and rewrite meta.json (by an atomic rename)
    with the new files' sha256 and the ``insight`` block; no other file changes."""
    files = {
        name: entry
        for name, entry in meta["files"].items()
        if not name.startswith(f"{INSIGHT_DIR}/")
    }
    for path in sorted(new_dir.iterdir()):
        files[f"{INSIGHT_DIR}/{path.name}"] = {
            "sha256": sha256_of(path),
            "bytes": path.stat().st_size,
        }
    meta = {**meta, "files": dict(sorted(files.items())), "insight": block}
    target, old = bundle / INSIGHT_DIR, bundle / f".{INSIGHT_DIR}.old-{os.getpid()}"
    if target.exists():
        target.rename(old)
    new_dir.rename(target)
    staged = bundle / f".{META_FILE}.tmp-{os.getpid()}"
    staged.write_text(json.dumps(meta, indent=2) + "\n")
    os.replace(staged, bundle / META_FILE)
    shutil.rmtree(old, ignore_errors=True)
