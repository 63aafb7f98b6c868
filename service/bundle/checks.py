"""Checks of a bundle on disk: every file's sha256, the open-set gallery, the torch twin, and
the parity of the ONNX graph with the twin on a fixed probe input.

Each raises ``BundleError`` with a message fit for ``/readyz`` (file names within the bundle,
never its path). ``served_graph`` says which ONNX graph a ``precision`` setting names (for
``auto``, the candidate the load-time probe measures) and how it is checked against the FP32
twin.
"""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np
from PIL import Image

from service.bundle.format import (
    ONNX_FILE,
    TWIN_FILE,
    BundleError,
    BundleMeta,
)
from service.bundle.preprocess import Preprocessor

log = logging.getLogger(__name__)

PROBE_SEED = 20261126
PROBE_BATCH = 2
_HASH_CHUNK_BYTES = 1024 * 1024


@dataclass(frozen=True)
class ServedGraph:
    """Which ONNX graph serves, and how it is checked against the FP32 twin at load time: FP32
    within ``tolerance`` (the twin's own numbers); INT8 with the same labels on the probe input
    and logits within the bundle's stated ``precision.int8.parity.tolerance``."""

    precision: Literal["fp32", "int8"]
    file: str
    tolerance: float
    labels_must_agree: bool


def served_graph(meta: BundleMeta, precision: str) -> ServedGraph:
    """The graph for the ``precision`` setting: fp32, int8 (a ``BundleError`` when the bundle
    has none), or auto's candidate (INT8 when the bundle has it and its recorded gates passed),
    which serves only if it also measures faster on this CPU
    (``service.inference.precision_probe.resolve_precision``)."""
    int8 = meta.precision.int8
    if precision not in ("fp32", "int8", "auto"):
        raise BundleError(f"unknown precision {precision!r}; valid: fp32, int8, auto")
    if precision == "int8" and int8 is None:
        raise BundleError(
            "precision int8 was asked for, but the bundle has no INT8 model (meta.json "
            "precision.int8); make one with 'python -m training quantize --bundle DIR', or "
            "serve precision fp32 or auto"
        )
    if int8 is not None and (precision == "int8" or (precision == "auto" and int8.passed)):
        return ServedGraph("int8", int8.file, int8.parity.tolerance, True)
    return ServedGraph("fp32", ONNX_FILE, meta.parity_tolerance, False)


def sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as stream:
        while chunk := stream.read(_HASH_CHUNK_BYTES):
            digest.update(chunk)
    return digest.hexdigest()


def verify_files(bundle_dir: Path, meta: BundleMeta) -> None:
    """Check that every file listed in ``meta.files`` exists with its sha256."""
    problems = []
    for name, info in sorted(meta.files.items()):
        path = bundle_dir / name
        if not path.is_file():
            problems.append(f"{name} is missing")
            continue
        actual = sha256_of(path)
        if actual != info.sha256:
            problems.append(f"{name} has sha256 {actual}, meta.json says {info.sha256}")
    if problems:
        raise BundleError("bundle file check failed: " + "; ".join(problems))
    log.info("bundle %s: sha256 of %d files verified", bundle_dir, len(meta.files))


def load_gallery(bundle_dir: Path, meta: BundleMeta) -> np.ndarray | None:
    """The open-set gallery (``(N, D)`` float32 unit rows), or None when the score needs none.
    Run after ``verify_files``: its sha256 has been checked by then."""
    name = meta.open_set.gallery if meta.open_set else None
    if not name:
        return None
    try:
        gallery = np.load(bundle_dir / name, allow_pickle=False)
    except (OSError, ValueError) as exc:
        raise BundleError(
            f"cannot read the open-set gallery {name} ({type(exc).__name__})"
        ) from exc
    if gallery.ndim != 2 or not len(gallery) or not np.isfinite(gallery).all():
        raise BundleError(f"the open-set gallery {name} is not a non-empty finite (N, D) array")
    return gallery.astype(np.float32)


def load_twin(bundle_dir: Path) -> Any:
    """The differentiable twin: ``torch.export`` program as a callable module.

    It maps ``(N, 3, H, W)`` float32 to ``(logits, {layer name: activation})``. The export
    already fixed eval mode (dropout off, batch-norm statistics frozen).

    Its weights are laid out channels-last: torch then runs every convolution through oneDNN,
    where in the default layout it takes its slow reference path for the small batches and
    feature maps of one face (``_slow_conv2d_forward``). The maps move by at most about 1e-6
    of their largest value (sums in another order); a gradient pass of one face took 0.8x the
    time, of 16 faces 0.86x (docs/performance.md#the-twins-gradient-pass).
    """
    import torch  # imported here: torch takes seconds to import and only loading needs it

    path = bundle_dir / TWIN_FILE
    try:
        twin = torch.export.load(str(path)).module()
    except Exception as exc:  # torch raises many types for a bad archive
        # torch's message may hold paths and internals: it goes to the log with the chain
        raise BundleError(f"cannot load the torch twin {TWIN_FILE} ({type(exc).__name__})") from exc
    return twin.to(memory_format=torch.channels_last)


def check_one_pass(meta: BundleMeta, values: np.ndarray, probe: np.ndarray) -> None:
    """The one-pass explainer's output on ``probe`` must be ``(N, classes, grid, grid)`` and
    finite (``meta.one_pass``); else ``BundleError``."""
    assert meta.one_pass is not None
    grid, name = meta.one_pass.grid, meta.one_pass.file
    expected = (len(probe), len(meta.classes), grid, grid)
    if values.shape != expected:
        raise BundleError(
            f"the one-pass explainer {name} gives shape {values.shape} on the probe input, "
            f"expected {expected} ({len(meta.classes)} classes, a {grid}x{grid} grid)"
        )
    if not np.isfinite(values).all():
        raise BundleError(f"the one-pass explainer {name} gives non-finite values")


def probe_batch(preprocess: Preprocessor) -> np.ndarray:
    """A fixed, seeded ``(2, 3, H, W)`` input: random RGB images through the real preprocessing."""
    rng = np.random.default_rng(PROBE_SEED)
    width, height = preprocess.size
    images = rng.integers(0, 256, size=(PROBE_BATCH, height, width, 3), dtype=np.uint8)
    return np.stack([preprocess(Image.fromarray(pixels)) for pixels in images])


def check_parity(
    meta: BundleMeta,
    onnx_forward: Callable[[np.ndarray], np.ndarray],
    twin: Any,
    probe: np.ndarray,
    graph: ServedGraph | None = None,
) -> float:
    """Compare ONNX and twin logits on ``probe``; returns the max absolute difference.

    ``graph`` (default: the FP32 one) gives the tolerance and whether the labels must agree.
    Also checks shapes against ``meta.classes`` and that the twin returns an activation for every
    layer in ``meta.layers``. Raises ``BundleError`` on any mismatch.
    """
    graph = graph or served_graph(meta, "fp32")
    import torch

    onnx_logits = onnx_forward(probe)
    with torch.no_grad():
        output = twin(torch.from_numpy(probe))
    if not (isinstance(output, (tuple, list)) and len(output) == 2):
        raise BundleError("the torch twin must return (logits, activations)")
    twin_logits, activations = output
    twin_logits = twin_logits.detach().cpu().numpy()
    expected_shape = (probe.shape[0], len(meta.classes))
    for label, logits in (("ONNX", onnx_logits), ("twin", twin_logits)):
        if logits.shape != expected_shape:
            raise BundleError(
                f"{label} logits have shape {logits.shape}, expected {expected_shape} "
                f"({len(meta.classes)} classes in meta.json)"
            )
    missing = [layer.name for layer in meta.layers if layer.name not in activations]
    if meta.gradcam_layer and meta.gradcam_layer not in activations:
        missing.append(meta.gradcam_layer)
    if missing:
        raise BundleError(f"the torch twin returns no activation for layers {missing}")
    max_diff = float(np.max(np.abs(onnx_logits.astype(np.float64) - twin_logits)))
    name = f"{graph.file} ({graph.precision.upper()})"
    if not max_diff <= graph.tolerance:  # also catches NaN
        raise BundleError(
            f"{name} and torch twin disagree: max |logit difference| {max_diff:.3g} on the "
            f"probe input exceeds the tolerance {graph.tolerance:.3g}"
        )
    if graph.labels_must_agree and not (onnx_logits.argmax(1) == twin_logits.argmax(1)).all():
        raise BundleError(f"{name} and torch twin give different labels on the probe input")
    log.info("parity: %s vs twin max |diff| %.3g (tolerance %.3g)", name, max_diff, graph.tolerance)
    return max_diff
