"""The bundle's one-pass explainer as the service runs it: checked at load, and grafted onto the
served graph where it can be (``one_pass_graph``), so that one run of that graph gives the
prediction and the map.

The grafted graph must agree with the explainer on its own on the probe input before it serves:
the same logits as the served graph (it is that graph), and raw values that correlate with the
explainer's own at least ``GRAFT_AGREEMENT`` (Pearson, every probe image). On the FP32 graph
they are equal; on the INT8 graph the heads read quantised activations (on 64 test faces: the
maps' rank correlation with FP32's median 0.996, lowest 0.981; on the probe's random images
about 0.98). A graft that reads the wrong activations correlates near 0. Where the graft fails,
the explainer runs on its own beside the prediction, as the bundle ships it, and the log and
``GET /model`` say why.
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Callable
from pathlib import Path

import numpy as np
import onnx

from service.bundle.checks import check_one_pass
from service.bundle.format import BundleError, BundleMeta
from service.explain.one_pass import OnePassModel
from service.inference.engine import create_session
from service.inference.one_pass_graph import GraftError, graft

log = logging.getLogger(__name__)

GRAFT_AGREEMENT = 0.95
"""lowest Pearson correlation, per probe image, of the grafted graph's raw values with the
explainer's own"""
LOGIT_TOLERANCE = 1e-3
"""largest |logit difference| between the grafted graph and the served graph on the probe"""


def load_one_pass(
    bundle_dir: Path,
    meta: BundleMeta,
    forward: Callable[[np.ndarray], np.ndarray],
    probe: np.ndarray,
    providers: str = "cpu",
    threads: int = 0,
    served: str | None = None,
) -> OnePassModel | None:
    """The bundle's one-pass explainer, checked on ``probe`` (``check_one_pass``), with the
    model's logits (``forward``) on the all-hidden image that its values add up from; None where
    the bundle has none (``fastshap`` is then unavailable). Its sha256 was checked with the
    other files. ``served``: the bundle's ONNX file that ``forward`` runs, to graft the
    explainer onto (None: it runs on its own). It runs on the calling worker thread, not the
    inference thread: one pass per request, never batched with others."""
    spec = meta.one_pass
    if spec is None:
        log.info("bundle has no one-pass explainer: fastshap is unavailable")
        return None
    session = create_session(bundle_dir / spec.file, providers, threads)
    input_name = session.get_inputs()[0].name

    def run(batch: np.ndarray) -> np.ndarray:
        values: np.ndarray = session.run([spec.output], {input_name: batch})[0]
        return values

    try:
        own = run(probe)
        check_one_pass(meta, own, probe)
    except BundleError:
        raise
    except Exception as exc:  # ONNX Runtime raises its own types for a graph that does not fit
        raise BundleError(
            f"the one-pass explainer {spec.file} does not run on the model input "
            f"({type(exc).__name__})"
        ) from exc
    baseline = np.asarray(forward(np.zeros_like(probe[:1]))[0], dtype=np.float32)
    one_pass = OnePassModel(run, baseline, spec.grid, spec.value, how=f"{spec.file} on its own")
    if served is not None:
        try:
            one_pass = _grafted(
                bundle_dir, meta, served, forward, probe, own, one_pass, providers, threads
            )
        except Exception as exc:  # a graft that fails in any way costs speed, not service
            reason = exc if isinstance(exc, GraftError) else f"{type(exc).__name__}: {exc}"
            one_pass = dataclasses.replace(one_pass, how=f"{one_pass.how} ({reason})")
            log.warning("one-pass explainer not grafted onto %s: %s", served, exc)
    log.info("one-pass explainer %s: %dx%d grid; %s", spec.file, spec.grid, spec.grid, one_pass.how)
    return one_pass


def _grafted(
    bundle_dir: Path,
    meta: BundleMeta,
    served: str,
    forward: Callable[[np.ndarray], np.ndarray],
    probe: np.ndarray,
    own: np.ndarray,
    alone: OnePassModel,
    providers: str,
    threads: int,
) -> OnePassModel:
    """``alone``, run instead as the explainer grafted onto ``served``, once it agrees with
    the explainer on its own (``own``: its values on ``probe``)."""
    assert meta.one_pass is not None
    spec = meta.one_pass
    stages = [layer.name for layer in meta.layers]
    fused = graft(
        onnx.load(bundle_dir / served), onnx.load(bundle_dir / spec.file), spec.output, stages
    )
    session = create_session(bundle_dir / served, providers, threads, fused.SerializeToString())
    input_name = session.get_inputs()[0].name
    logits_name = session.get_outputs()[0].name  # the served graph's first output

    def predict(batch: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        values, logits = session.run([spec.output, logits_name], {input_name: batch})
        return values, logits

    values, logits = predict(probe)
    logit_diff = float(np.abs(logits - forward(probe)).max())
    if logit_diff > LOGIT_TOLERANCE:
        raise GraftError(
            f"its logits differ from {served}'s by {logit_diff:.2g} on the probe input"
        )
    agreement = min(
        float(np.corrcoef(mine.ravel(), theirs.ravel())[0, 1])
        for mine, theirs in zip(values, own, strict=True)
    )
    if not agreement >= GRAFT_AGREEMENT:  # also NaN
        raise GraftError(
            f"its values correlate {agreement:.3f} with {spec.file}'s on the probe input, "
            f"below {GRAFT_AGREEMENT}"
        )
    how = (
        f"grafted onto {served}: one run gives the prediction and the map (values' "
        f"correlation with {spec.file} on the probe input: {agreement:.3f})"
    )
    return dataclasses.replace(alone, run=lambda batch: predict(batch)[0], predict=predict, how=how)
