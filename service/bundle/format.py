"""The model bundle on disk (models/README.md): metadata, file checks, the torch twin, parity.

Nothing here imports the training package: a bundle is self-describing. Every check raises
``BundleError`` with a message fit for ``/readyz``. This is the one definition of the format:
training's writer (``training/export.py``, ``training/insight.py``) uses the same file names,
schema version, ``BundleMeta`` and ``sha256_of``, and validates what it writes with
``BundleMeta`` before the bundle is moved into place.
"""

from __future__ import annotations

import hashlib
import json
import logging
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np
from PIL import Image
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from service.bundle.alignment import AlignmentSpec
from service.bundle.preprocess import InputSpec, Preprocessor
from service.errors import describe_validation_errors

log = logging.getLogger(__name__)

# 2 added ``input.framing``: a reader of 1 would ignore it and show the model faces framed
# otherwise, so bundles that may have it say 2; this service reads both.
SCHEMA_VERSION = 2
SUPPORTED_SCHEMA_VERSIONS = (1, 2)
META_FILE = "meta.json"
ONNX_FILE = "model.onnx"
TWIN_FILE = "model.pt2"
INT8_FILE = "model.int8.onnx"
# The ONNX graph's optional second output: the layer before the head (open-set scores).
EMBEDDING_OUTPUT = "embedding"
DEFAULT_PARITY_TOLERANCE = 1e-4
PROBE_SEED = 20261126
PROBE_BATCH = 2
_HASH_CHUNK_BYTES = 1024 * 1024


class BundleError(Exception):
    """A bundle that cannot be served; the message says why."""


class ClassInfo(BaseModel):
    id: str
    name: str


class FileInfo(BaseModel):
    model_config = ConfigDict(extra="allow")

    sha256: str = Field(pattern=r"^[0-9a-f]{64}$")
    bytes: int | None = None


class LayerInfo(BaseModel):
    model_config = ConfigDict(extra="allow")

    name: str
    channels: int | None = None
    height: int | None = None
    width: int | None = None


class FusionSpec(BaseModel):
    """``open_set.fusion``: the logistic regression of ``service.bundle.open_set.Fusion``."""

    model_config = ConfigDict(frozen=True)

    components: list[
        Literal["max_softmax_probability", "max_logit", "nearest_training_face_cosine"]
    ]
    mean: list[float]
    scale: list[float]
    weights: list[float]
    bias: float

    @model_validator(mode="after")
    def _same_lengths(self) -> FusionSpec:
        n = len(self.components)
        if not n or any(len(v) != n for v in (self.mean, self.scale, self.weights)):
            raise ValueError("components, mean, scale and weights need one entry per part")
        if any(s <= 0 for s in self.scale):
            raise ValueError("every scale must be positive")
        return self


class OpenSetSpec(BaseModel):
    """``meta.json["open_set"]``: a face is one of the classes when its score is at least
    ``threshold`` (see ``service.bundle.open_set``). ``score`` is ``max_softmax_probability`` (the
    largest class probability) or ``fused`` (``fusion`` over parts; ``gallery`` names the file
    of normalised training embeddings when a part needs it). ``calibration_scores`` are the
    known calibration faces' scores and ``calibration_unknown_scores`` the calibration strangers':
    the service sets the threshold from them for another ``target_false_rejection_rate`` (the
    ``open_set_target_frr`` setting; ``open_set.threshold_for_operating_point``)."""

    model_config = ConfigDict(extra="allow", frozen=True)

    score: Literal["max_softmax_probability", "fused"]
    threshold: float = Field(ge=0, le=1)
    target_false_rejection_rate: float | None = Field(None, ge=0, lt=1)
    calibration_scores: list[float] | None = None
    calibration_unknown_scores: list[float] | None = None
    fusion: FusionSpec | None = None
    gallery: str | None = None

    @model_validator(mode="after")
    def _fusion_when_fused(self) -> OpenSetSpec:
        if (self.score == "fused") != (self.fusion is not None):
            raise ValueError("'fusion' is required with score 'fused' and only then")
        needs = self.fusion is not None and "nearest_training_face_cosine" in self.fusion.components
        if needs and not self.gallery:
            raise ValueError("the nearest-training-face part needs a 'gallery' file")
        return self


class Int8Parity(BaseModel):
    """``precision.int8.parity``: the INT8 graph's load-time check against the FP32 twin."""

    model_config = ConfigDict(extra="allow", frozen=True)

    tolerance: float = Field(gt=0)


class Int8Spec(BaseModel):
    """``precision.int8``, written by ``python -m training quantize``: the INT8 graph's file,
    its parity tolerance, and the gates measured against FP32 (``gates.passed``)."""

    model_config = ConfigDict(extra="allow", frozen=True)

    file: str
    parity: Int8Parity
    gates: dict[str, Any] = Field(default_factory=dict)

    @property
    def passed(self) -> bool:
        return self.gates.get("passed") is True


class PrecisionSpec(BaseModel):
    """``meta.json["precision"]``: the reduced-precision graphs the bundle offers."""

    model_config = ConfigDict(extra="allow", frozen=True)

    int8: Int8Spec | None = None


class BundleMeta(BaseModel):
    """``meta.json``. Unknown keys are kept, so newer bundles pass through ``/model`` intact."""

    model_config = ConfigDict(extra="allow", frozen=True)

    schema_version: int
    name: str
    version: str
    created_at: str | None = None
    architecture: dict[str, Any] = Field(default_factory=dict)
    classes: list[ClassInfo] = Field(min_length=1)
    input: InputSpec
    gradcam_layer: str | None = None
    layers: list[LayerInfo] = Field(default_factory=list)
    files: dict[str, FileInfo]
    parity: dict[str, Any] = Field(default_factory=dict)
    training: dict[str, Any] = Field(default_factory=dict)
    metrics: dict[str, Any] = Field(default_factory=dict)
    face_alignment: AlignmentSpec | None = None
    open_set: OpenSetSpec | None = None
    precision: PrecisionSpec = Field(default_factory=PrecisionSpec)

    @property
    def parity_tolerance(self) -> float:
        return float(self.parity.get("tolerance", DEFAULT_PARITY_TOLERANCE))


def read_meta(bundle_dir: Path) -> BundleMeta:
    """Parse and validate ``bundle_dir/meta.json``."""
    path = bundle_dir / META_FILE
    # Messages name files within the bundle, never the bundle's path: /readyz shows them to
    # anyone, and the service log (which has the path) is where operators look.
    if not bundle_dir.is_dir():
        raise BundleError("the model bundle directory does not exist")
    if not path.is_file():
        raise BundleError(f"{META_FILE} is missing")
    try:
        meta = BundleMeta.model_validate(json.loads(path.read_text(encoding="utf-8")))
    except json.JSONDecodeError as exc:
        raise BundleError(
            f"{META_FILE} is not valid JSON: {exc.msg} at line {exc.lineno} column {exc.colno}"
        ) from exc
    except UnicodeDecodeError as exc:
        raise BundleError(f"{META_FILE} is not UTF-8 text") from exc
    except ValidationError as exc:
        problems = describe_validation_errors(exc.errors())
        raise BundleError(f"{META_FILE} does not match the bundle format: {problems}") from exc
    if meta.schema_version not in SUPPORTED_SCHEMA_VERSIONS:
        raise BundleError(
            f"{META_FILE}: schema_version {meta.schema_version} is not supported (expected "
            f"one of {', '.join(map(str, SUPPORTED_SCHEMA_VERSIONS))})"
        )
    if meta.schema_version < 2 and meta.input.framing is not None:
        raise BundleError(
            f"{META_FILE}: input.framing needs schema_version 2 (found "
            f"{meta.schema_version}): a reader of version 1 would ignore it"
        )
    for required in (ONNX_FILE, TWIN_FILE):
        if required not in meta.files:
            raise BundleError(f"{META_FILE}: 'files' does not list {required}")
    gallery = meta.open_set.gallery if meta.open_set else None
    if gallery and gallery not in meta.files:  # listed, so its sha256 is checked too
        raise BundleError(f"{META_FILE}: 'files' does not list the open-set gallery {gallery}")
    int8 = meta.precision.int8
    if int8 is not None and int8.file not in meta.files:
        raise BundleError(f"{META_FILE}: 'files' does not list the INT8 model {int8.file}")
    return meta


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
    has none), or auto (INT8 when the bundle has it and its recorded gates passed)."""
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
    """
    import torch  # imported here: torch takes seconds to import and only loading needs it

    path = bundle_dir / TWIN_FILE
    try:
        return torch.export.load(str(path)).module()
    except Exception as exc:  # torch raises many types for a bad archive
        # torch's message may hold paths and internals: it goes to the log with the chain
        raise BundleError(f"cannot load the torch twin {TWIN_FILE} ({type(exc).__name__})") from exc


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
