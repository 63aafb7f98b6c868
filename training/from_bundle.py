"""A bundle back into a trainable model: the weights of its torch twin in a ``FaceClassifier``.

Lets ``export --bundle`` rewrite a bundle in the current format (e.g. with the ``embedding``
output and the open-set gallery) without retraining, and lets the open-set study read the
embedding of the model a bundle serves.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch

from service.bundle.format import TWIN_FILE, read_meta
from training.backbones import build_backbone
from training.model import FaceClassifier
from training.preprocess import Preprocessing

TWIN_PREFIX = "model."  # export.Twin wraps the classifier as ``model``


def classifier_from_bundle(bundle: Path) -> tuple[FaceClassifier, Preprocessing, dict]:
    """(the classifier in eval mode, its preprocessing, meta.json as a dict)."""
    meta = read_meta(bundle).model_dump()
    args = meta["training"].get("args", {})
    backbone, _ = build_backbone(meta["architecture"]["backbone"], "none")
    prep = Preprocessing.from_meta(meta["input"])  # the bundle's own (its framing, too)
    model = FaceClassifier(backbone, len(meta["classes"]), dropout=args.get("dropout", 0.3))
    program = torch.export.load(str(bundle / TWIN_FILE))
    state = {
        key.removeprefix(TWIN_PREFIX): value
        for key, value in program.state_dict.items()
        if key.startswith(TWIN_PREFIX)
    }
    model.load_state_dict(state)  # strict: a twin of another architecture fails here
    return model.eval(), prep, meta


def checkpoint_from_bundle(bundle: Path) -> tuple[dict, FaceClassifier, Preprocessing]:
    """What ``fit`` saves as checkpoint.pt, rebuilt from a bundle (meta.json, split.json, twin)."""
    model, prep, meta = classifier_from_bundle(bundle)
    ckpt = {
        "name": meta["name"],
        "args": meta["training"]["args"],
        "classes": [c["id"] for c in meta["classes"]],
        "split": json.loads((bundle / "split.json").read_text()),
        "training": meta["training"],
        "metrics": meta["metrics"],
        "state_dict": model.state_dict(),
    }
    if "selection" in meta:
        ckpt["selection"] = meta["selection"]
    return ckpt, model, prep
