"""``python -m training twin``: re-export a bundle's torch twin from its own weights, in the
current format, leaving every other file as it is.

The current twin returns the embedding the open-set score reads beside its activations
(``export.Twin``), so the gradient methods can explain that score. The new twin must give the
old one's logits and activations on the probe input, and its embedding must match the ONNX
graph's ``embedding`` output, before it replaces the old file; meta.json then lists its sha256.
"""

from __future__ import annotations

import logging
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime as ort
import torch

from service.bundle.checks import load_twin, probe_batch, sha256_of
from service.bundle.format import EMBEDDING_OUTPUT, ONNX_FILE, TWIN_FILE, read_meta
from service.bundle.preprocess import Preprocessor
from service.insight.patches import INDEX_NAME, INSIGHT_DIR, TopPatchIndex
from training.bundle_meta import update_meta
from training.export import export_twin
from training.from_bundle import classifier_from_bundle

log = logging.getLogger(__name__)

TOLERANCE = 1e-4


def refresh_twin(bundle: Path) -> float:
    """Write the current-format twin of ``bundle``; returns the largest difference found (old
    twin's logits and activations, ONNX's embedding) on the probe input. ``RuntimeError`` (the
    old twin kept) when it exceeds ``TOLERANCE``."""
    meta = read_meta(bundle)
    model, _, _ = classifier_from_bundle(bundle)
    probe = probe_batch(Preprocessor(meta.input))
    old = load_twin(bundle)
    with tempfile.TemporaryDirectory(dir=bundle.parent) as tmp:
        staged = Path(tmp) / TWIN_FILE
        export_twin(model, torch.from_numpy(probe), staged)
        new = load_twin(Path(tmp))
        differences = _differences(old, new, bundle / ONNX_FILE, probe)
        worst = max(differences.values())
        log.info("new twin vs old twin and ONNX: %s", differences)
        if not worst <= TOLERANCE:
            raise RuntimeError(
                f"the re-exported twin differs by {worst:.3g} (> {TOLERANCE}): {differences}; "
                f"{TWIN_FILE} kept"
            )
        staged.replace(bundle / TWIN_FILE)
    relinked = _relink_top_patches(bundle, meta.files[TWIN_FILE].sha256)
    update_meta(bundle, lambda raw: None, [TWIN_FILE, *relinked])
    return worst


def _relink_top_patches(bundle: Path, old_sha256: str) -> list[str]:
    """The stored top patches name the twin that computed them (the service serves them only
    for that twin). The new twin computes the same activations (checked above), so patches
    computed by the old one now name the new one; returns the file changed (none where there
    are no top patches, or they were computed by yet another twin)."""
    path = bundle / INSIGHT_DIR / INDEX_NAME
    if not path.is_file():
        return []
    index = TopPatchIndex.model_validate_json(path.read_text())
    if index.model_sha256 != old_sha256:
        return []
    relinked = index.model_copy(update={"model_sha256": sha256_of(bundle / TWIN_FILE)})
    path.write_text(relinked.model_dump_json() + "\n")
    return [f"{INSIGHT_DIR}/{INDEX_NAME}"]


@torch.no_grad()
def _differences(old: Any, new: Any, onnx_path: Path, probe: np.ndarray) -> dict[str, float]:
    x = torch.from_numpy(probe)
    old_logits, old_activations = old(x)
    new_logits, new_activations = new(x)
    session = ort.InferenceSession(str(onnx_path), providers=["CPUExecutionProvider"])
    (embedding,) = session.run([EMBEDDING_OUTPUT], {"input": probe})
    differences = {"logits": _max_abs(old_logits, new_logits)}
    for name, activation in old_activations.items():
        differences[name] = _max_abs(activation, new_activations[name])
    differences[EMBEDDING_OUTPUT] = _max_abs(
        torch.from_numpy(embedding), new_activations[EMBEDDING_OUTPUT]
    )
    return differences


def _max_abs(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a.double() - b.double()).abs().max())


def twin_command(args: Any) -> int:
    """``python -m training twin``: refresh the twin, say by how much it moved."""
    worst = refresh_twin(Path(args.bundle))
    print(
        f"wrote {Path(args.bundle) / TWIN_FILE}: the embedding is an output; largest "
        f"difference from the old twin and the ONNX embedding {worst:.2e}"
    )
    return 0
