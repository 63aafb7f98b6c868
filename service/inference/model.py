"""The model as served: a checked bundle, its ONNX engine and torch twin, loaded once.

``load_model`` runs every load-time check of models/README.md (sha256 of every file, ONNX vs
twin parity on a fixed probe input) and warms the session up; any failure raises
``BundleError``/``EngineError`` and the app stays not-ready with that message.
"""

from __future__ import annotations

import logging
import os
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
from starlette.concurrency import run_in_threadpool

from service.bundle.checks import (
    check_parity,
    load_gallery,
    load_twin,
    probe_batch,
    verify_files,
)
from service.bundle.evidence import (
    TrainingFaces,
    gallery_similarities,
    load_training_faces,
    open_set_parts,
)
from service.bundle.format import BundleError, BundleMeta, read_meta
from service.bundle.open_set import OpenSetRule, open_set_rule
from service.bundle.preprocess import Preprocessor
from service.common.softmax import softmax
from service.common.twin import start_one_face_thread
from service.explain.objective import OpenSetScore
from service.explain.one_pass import OnePassModel
from service.faces.choice import FaceChoice
from service.faces.finder import FaceFinder
from service.inference.bf16_gate import TwinPrecision, choose_twin_precision
from service.inference.engine import (
    Admitted,
    BatchObserver,
    BatchStats,
    Engine,
    create_session,
)
from service.inference.one_pass_load import load_one_pass
from service.inference.precision_probe import PrecisionChoice, resolve_precision
from service.inference.twin_fold import fold_affine
from service.observability import tracing
from service.settings import Settings

log = logging.getLogger(__name__)

# Crops up to this many pixels (an aligned face is 112 x 112) are preprocessed on the event loop:
# that takes ~0.1 ms, less than the hop to a worker thread and back (~0.12 ms of CPU here).
# Larger ones (whole uploads, detect=false) go to a worker thread, off the loop.
INLINE_PREPROCESS_PIXELS = 256 * 256


@dataclass(frozen=True)
class LoadReport:
    """What loading found, for ``/model`` and ``/readyz``."""

    files_verified: int
    precision: str
    """the ONNX graph serving: fp32 or int8 (``bundle.served_graph``)"""
    onnx_file: str
    parity_max_abs_diff: float
    parity_tolerance: float
    load_ms: float
    warmup_ms: float
    loaded_at: datetime
    precision_choice: PrecisionChoice
    """why that graph serves: the setting, auto's probe figures and the CPU"""
    twin_precision: TwinPrecision
    """whether the twin's sampled gradient passes run in bfloat16, and why"""


@dataclass(frozen=True)
class Classification:
    """The model's answer for one image."""

    probabilities: np.ndarray
    """``(C,)`` float64 softmax of the logits, in ``meta.classes`` order"""
    batch: BatchStats
    preprocess_ms: float
    open_set_score: float | None = None
    """the "one of the classes" score (``ServingModel.open_set``); None without one"""
    open_set_parts: dict[str, float] | None = None
    """the parts the open-set score was made of, by name (``bundle.open_set.COMPONENTS``)"""
    embedding: np.ndarray | None = None
    """``(D,)`` float32 embedding (the layer before the head); None when the graph has none"""
    similarities: np.ndarray | None = None
    """``(N,)`` cosine of the embedding to each open-set gallery row (``training_faces``'s
    files); None without a gallery"""

    @property
    def top(self) -> int:
        return int(np.argmax(self.probabilities))


@dataclass(frozen=True)
class ModelInput:
    """The chosen face and the ``(3, H, W)`` float32 model input made from it."""

    face: FaceChoice
    x: np.ndarray
    preprocess_ms: float


class ServingModel:
    """A loaded, checked bundle. ``engine`` runs the ONNX graph (batched); ``twin`` is the torch
    module for gradient methods: ``twin(x) -> (logits, {layer: activation})``; ``faces`` finds and
    aligns faces when the bundle says how (``meta.face_alignment``), else it is None."""

    def __init__(
        self,
        bundle_dir: Path,
        meta: BundleMeta,
        preprocess: Preprocessor,
        engine: Engine,
        twin: Any,
        report: LoadReport,
        faces: FaceFinder | None = None,
        open_set: OpenSetRule | None = None,
        training_faces: TrainingFaces | None = None,
        one_pass: OnePassModel | None = None,
    ) -> None:
        self.bundle_dir = bundle_dir
        self.meta = meta
        self.preprocess = preprocess
        self.engine = engine
        self.twin = twin
        self.report = report
        self.faces = faces
        self.open_set = open_set
        self.open_set_score = None if open_set is None else explainable(open_set)
        """the open-set score as maps explain it (``target=open_set``)"""
        self.training_faces = training_faces
        """the gallery's rows as training files (answers' evidence, ``GET /evidence``)"""
        self.one_pass = one_pass
        """the bundle's one-pass explainer (``fastshap``); None where it has none"""
        self.inspector: Any = None
        """its insight inspector, once ``ServiceState.inspector_of`` has made one: held here, so
        that it goes with the model (a weak mapping from the model to it could not let go: the
        inspector refers to its model)"""
        self.url_query = ""
        """what the service's URLs to this model's resources end with (``GET /evidence``
        links): ``?model=<name>`` for a model other than the default (``ModelRegistry``)"""

    async def model_input(self, face: FaceChoice) -> ModelInput:
        """The one way from a chosen face to the model's input (what ``/predict`` classifies
        and every explanation explains): its crop preprocessed, inline when it is small, on a
        worker thread when it is large. Traced as ``preprocess``."""
        started = time.perf_counter()
        crop = face.aligned.crop
        attributes = {"celebxai.crop.width": crop.width, "celebxai.crop.height": crop.height}
        with tracing.span("preprocess", attributes):
            if crop.width * crop.height <= INLINE_PREPROCESS_PIXELS:
                x = self.preprocess(crop)
            else:
                x = await run_in_threadpool(self.preprocess, crop)
        return ModelInput(face, x, (time.perf_counter() - started) * 1000)

    async def classify(self, inputs: ModelInput) -> Classification:
        """Class probabilities (and the open-set score) of ``inputs``, through the batcher.
        The embedding's product with the gallery is made once: the score's nearest-face part
        and the answer's evidence both read it."""
        row, stats = await self.engine.submit(inputs.x)
        logits, embedding = self.engine.split_row(row, len(self.meta.classes))
        gallery = self.open_set.gallery if self.open_set else None
        similarities = None
        if embedding is not None and gallery is not None:
            similarities = gallery_similarities(embedding, gallery)
        score = parts = None
        if self.open_set is not None:
            score, parts = open_set_parts(self.open_set, logits, similarities)
        return Classification(
            softmax(logits), stats, inputs.preprocess_ms, score, parts, embedding, similarities
        )

    def start(self, admitted: Admitted | None = None) -> None:
        """Start serving; ``admitted``: the requests in progress (``DynamicBatcher``)."""
        self.engine.start(admitted)

    async def close(self) -> None:
        await self.engine.close()


def explainable(rule: OpenSetRule) -> OpenSetScore:
    """``rule``'s score as a differentiable function (``service.explain.objective``)."""
    fusion = rule.fusion
    if fusion is None:
        return OpenSetScore((rule.score,), rule.gallery)
    return OpenSetScore(
        fusion.components, rule.gallery, fusion.mean, fusion.scale, fusion.weights, fusion.bias
    )


def load_model(settings: Settings, observer: BatchObserver | None = None) -> ServingModel:
    """Load and check the bundle at ``settings.model`` (blocking; seconds). Not started yet."""
    started = time.perf_counter()
    bundle_dir = settings.model.resolve()
    log.info("loading model bundle %s", bundle_dir)
    meta = read_meta(bundle_dir)
    verify_files(bundle_dir, meta)
    try:
        preprocess = Preprocessor(meta.input)
    except ValueError as exc:
        raise BundleError(f"meta.json input: {exc}") from exc
    if settings.threads:
        import torch

        torch.set_num_threads(settings.threads)
    probe = probe_batch(preprocess)
    graph, choice = resolve_precision(
        bundle_dir, meta, settings.precision, settings.providers, probe
    )
    log.info(
        "precision %s (setting %s): serving %s; %s",
        graph.precision,
        settings.precision,
        graph.file,
        choice.reason,
    )
    session = create_session(bundle_dir / graph.file, settings.providers, settings.threads)
    engine = Engine(
        session,
        max_batch_size=settings.max_batch_size,
        batch_timeout_s=settings.batch_timeout_ms / 1000,
        observer=observer,
    )
    twin = load_twin(bundle_dir)
    log.info("twin: %d convolutions' per-channel affine folded into them", fold_affine(twin))
    start_one_face_thread()
    faces = None
    if meta.face_alignment is not None:
        faces = FaceFinder(
            meta.face_alignment,
            workers=settings.threads or os.cpu_count() or 1,
            cache_entries=settings.face_search_cache,
        )
        log.info(
            "face detection on: %s + %s",
            meta.face_alignment.detector,
            meta.face_alignment.landmarks,
        )
    else:
        log.warning("bundle has no face_alignment: every image is classified whole, as a face crop")
    gallery = load_gallery(bundle_dir, meta)
    open_set = open_set_rule(meta, gallery, settings.open_set_target_frr)
    training_faces = load_training_faces(bundle_dir, meta, gallery, settings.evidence_dir)
    max_diff = check_parity(meta, engine.run, twin, probe, graph)
    twin_precision = choose_twin_precision(twin, probe, choice.cpu)
    if open_set is not None and open_set.gallery is not None:
        embedding = engine.split_row(engine.run_rows(probe[:1])[0], len(meta.classes))[1]
        if embedding is None or embedding.shape != open_set.gallery.shape[1:]:
            raise BundleError(
                f"{graph.file} has no 'embedding' output of the open-set gallery's width "
                f"{open_set.gallery.shape[1]}"
            )
    one_pass = load_one_pass(
        bundle_dir, meta, engine.run, probe, settings.providers, settings.threads, graph.file
    )
    warmup_s = engine.warm_up(probe[0])
    report = LoadReport(
        files_verified=len(meta.files),
        precision=graph.precision,
        onnx_file=graph.file,
        parity_max_abs_diff=max_diff,
        parity_tolerance=graph.tolerance,
        load_ms=(time.perf_counter() - started) * 1000,
        warmup_ms=warmup_s * 1000,
        loaded_at=datetime.now(UTC),
        precision_choice=choice,
        twin_precision=twin_precision,
    )
    log.info(
        "model %s %s ready: %d classes, %s, loaded in %.0f ms (warm-up %.0f ms)",
        meta.name,
        meta.version,
        len(meta.classes),
        engine.provider,
        report.load_ms,
        report.warmup_ms,
    )
    return ServingModel(
        bundle_dir,
        meta,
        preprocess,
        engine,
        twin,
        report,
        faces,
        open_set,
        training_faces,
        one_pass,
    )
