"""The model bundle's format (models/README.md): file names, ``meta.json``'s schema, reading it.

Nothing here imports the training package: a bundle is self-describing. Reading raises
``BundleError`` with a message fit for ``/readyz``; the checks of the files themselves are in
``service.bundle.checks``. This is the one definition of the format: training's writer
(``training/export.py``, ``training/insight.py``) uses the same file names, schema version,
``BundleMeta`` and ``checks.sha256_of``, and validates what it writes with ``BundleMeta``
before the bundle is moved into place.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from service.bundle.alignment import AlignmentSpec
from service.bundle.preprocess import InputSpec
from service.errors import describe_validation_errors

# 2 added ``input.framing``: a reader of 1 would ignore it and show the model faces framed
# otherwise, so bundles that may have it say 2; this service reads both.
SCHEMA_VERSION = 2
SUPPORTED_SCHEMA_VERSIONS = (1, 2)
META_FILE = "meta.json"
ONNX_FILE = "model.onnx"
TWIN_FILE = "model.pt2"
INT8_FILE = "model.int8.onnx"
ONE_PASS_FILE = "one_pass.onnx"
# The ONNX graph's optional second output: the layer before the head (open-set scores).
EMBEDDING_OUTPUT = "embedding"
DEFAULT_PARITY_TOLERANCE = 1e-4


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


class OnePassSpec(BaseModel):
    """``meta.json["one_pass"]``, written by ``python -m training one-pass``: the one-pass
    explainer the ``fastshap`` method runs. ``file`` maps the model input (``input``) to
    ``(N, classes, grid, grid)`` raw cell values (``output``); the service makes them Shapley
    values of the model's logits with hidden cells at model input 0
    (``service.explain.one_pass``). ``gates`` holds the figures it passed on the test split,
    ``training`` how it was fitted."""

    model_config = ConfigDict(extra="allow", frozen=True)

    method: Literal["fastshap"]
    file: str
    grid: int = Field(ge=1, le=64)
    output: str = "values"
    value: Literal["logit", "log_probability"] = "logit"
    explains: str
    gates: dict[str, Any] = Field(default_factory=dict)
    training: dict[str, Any] = Field(default_factory=dict)


class SanityStage(BaseModel):
    """One step of the cascade: the modules re-drawn so far and how alike the maps still are."""

    model_config = ConfigDict(extra="allow", frozen=True)

    stage: str  # the module(s) randomised at this step, e.g. "fc", "layer4"
    spearman: float  # mean over faces, |map| rank correlation trained vs randomised
    ssim: float  # mean over faces


class SanityMethod(BaseModel):
    """One explanation method's cascade and whether it passed the rule."""

    model_config = ConfigDict(extra="allow", frozen=True)

    passed: bool
    stages: list[SanityStage]  # cascade order: top of the network first, cumulative


class SanitySpec(BaseModel):
    """``meta.json["sanity"]``, written by ``python -m training sanity``: the cascading
    model-parameter randomisation test (Adebayo et al., 2018). The network's parameters are
    re-drawn stage by stage from the head down, cumulatively, and each method's maps of the
    test faces on the randomised network are compared with its maps on the trained one. A
    method passes when its mean Spearman rank correlation of the absolute maps stays below
    ``pass_below`` at every stage: its maps depend on what the model learned."""

    model_config = ConfigDict(extra="allow", frozen=True)

    test: Literal["cascading_model_parameter_randomisation"]
    rule: str  # the pass rule in words (the same text the docs give)
    pass_below: float
    faces: int
    split: str
    created_at: str
    methods: dict[str, SanityMethod]


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
    sanity: SanitySpec | None = None
    one_pass: OnePassSpec | None = None

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
    if meta.one_pass is not None and meta.one_pass.file not in meta.files:
        raise BundleError(
            f"{META_FILE}: 'files' does not list the one-pass explainer {meta.one_pass.file}"
        )
    return meta
