"""Cancelled explanations and syntheses stop at their next batch: counted in forward passes on
the real bundle and real faces, with the token cancelled while pass ``k`` runs (as a client
hanging up mid-way does)."""

from __future__ import annotations

import numpy as np
import pytest

from service.common.cancellation import Cancellation, Cancelled
from service.explain import EXPLAINERS, ModelHandle
from service.insight.maximize import MaximizeParams, Objective, PixelCodec, synthesize

STOP_AFTER = 3


class CountingForward:
    """The ONNX forward, counting passes; cancels ``cancellation`` during pass ``stop_after``."""

    def __init__(self, handle: ModelHandle, cancellation: Cancellation, stop_after: int) -> None:
        self.forward = handle.forward
        self.cancellation = cancellation
        self.stop_after = stop_after
        self.passes = 0

    def __call__(self, batch: np.ndarray) -> np.ndarray:
        self.passes += 1
        if self.passes == self.stop_after:
            self.cancellation.cancel("client hung up")
        return self.forward(batch)


class CancelAfter:
    """An ``on_batch`` callback: counts passes and cancels during pass ``stop_after``."""

    def __init__(self, stop_after: int) -> None:
        self.stop_after = stop_after
        self.passes = 0
        self.cancellation = Cancellation(on_batch=self)

    def __call__(self) -> None:
        self.passes += 1
        if self.passes == self.stop_after:
            self.cancellation.cancel("client hung up")


# Every method without the twin, with batches small enough for more than STOP_AFTER passes
# (a method not listed runs with its defaults).
PERTURBATION_PARAMS: dict[str, dict[str, object]] = {
    "lime": {"num_samples": 256, "batch_size": 16},  # 1 + 16 passes when run to the end
    "occlusion": {"window": 24, "stride": 12, "batch_size": 8},  # 1 + 25 windows / 8 = 5
}
PERTURBATION_CASES = [
    (name, PERTURBATION_PARAMS.get(name, {}))
    for name, method in EXPLAINERS.items()
    if not method.needs_twin and not method.needs_one_pass  # one pass: nothing to cut short
]


@pytest.mark.parametrize(("method", "params"), PERTURBATION_CASES)
def test_perturbation_methods_stop_at_the_next_batch(handle, face, method, params):
    x, _ = face
    cancellation = Cancellation()
    forward = CountingForward(handle, cancellation, STOP_AFTER)
    explainer = EXPLAINERS[method](ModelHandle(forward, cancellation=cancellation))

    with pytest.raises(Cancelled, match="client hung up"):
        explainer.attribute(x, **params)

    # the pass running when it was cancelled finishes; no other one starts
    assert forward.passes == STOP_AFTER


@pytest.mark.parametrize(("method", "params"), PERTURBATION_CASES)
def test_an_uncancelled_token_changes_nothing(handle, face, method, params):
    x, _ = face
    cancellation = Cancellation()
    forward = CountingForward(handle, cancellation, stop_after=0)  # never cancels
    plain = EXPLAINERS[method](handle).attribute(x, **params)

    watched = EXPLAINERS[method](ModelHandle(forward, cancellation=cancellation)).attribute(
        x, **params
    )

    np.testing.assert_array_equal(watched.values, plain.values)
    assert forward.passes > STOP_AFTER  # the cancelled runs above really were cut short


GRADIENT_CASES = [
    # the whole budget (stop=fixed): 8 passes of 2 noisy copies, 8 of 4 path points
    ("smoothgrad", {"samples": 16, "batch_size": 2, "stop": "fixed"}),
    ("integrated_gradients", {"steps": 32, "batch_size": 4, "stop": "fixed"}),
]


@pytest.mark.parametrize(("method", "params"), GRADIENT_CASES)
def test_gradient_methods_stop_at_the_next_pass_of_the_twin(handle, face, method, params):
    x, _ = face
    counter = CancelAfter(STOP_AFTER)
    explainer = EXPLAINERS[method](
        ModelHandle(handle.forward, handle.twin, handle.gradcam_layer, counter.cancellation)
    )

    with pytest.raises(Cancelled):
        explainer.attribute(x, **params)

    assert counter.passes == STOP_AFTER


@pytest.mark.parametrize(("method", "params"), GRADIENT_CASES)
def test_gradient_methods_report_every_pass_when_not_cancelled(handle, face, method, params):
    x, _ = face
    counter = CancelAfter(stop_after=0)
    EXPLAINERS[method](
        ModelHandle(handle.forward, handle.twin, handle.gradcam_layer, counter.cancellation)
    ).attribute(x, **params)

    assert counter.passes == 8


@pytest.mark.parametrize("method", sorted(EXPLAINERS))
def test_work_cancelled_before_it_starts_runs_no_pass(handle, face, method):
    x, _ = face
    cancellation = Cancellation()
    cancellation.cancel("client hung up")
    forward = CountingForward(handle, cancellation, stop_after=0)
    explainer = EXPLAINERS[method](
        ModelHandle(
            forward, handle.twin, handle.gradcam_layer, cancellation, one_pass=handle.one_pass
        )
    )

    with pytest.raises(Cancelled):
        explainer.attribute(x)

    assert forward.passes == 0


def test_a_cancelled_synthesis_stops_at_the_next_step(handle, bundle_meta):
    counter = CancelAfter(STOP_AFTER)
    params = MaximizeParams(steps=50)

    with pytest.raises(Cancelled):
        synthesize(
            handle.twin,
            PixelCodec(bundle_meta.input),
            Objective(class_index=0),
            params,
            counter.cancellation,
        )

    # pass 1 scores the starting noise, passes 2 and 3 are steps; step 3 never runs
    assert counter.passes == STOP_AFTER


def test_a_synthesis_reports_each_pass(handle, bundle_meta):
    counter = CancelAfter(stop_after=0)

    result = synthesize(
        handle.twin,
        PixelCodec(bundle_meta.input),
        Objective(class_index=0),
        MaximizeParams(steps=4),
        counter.cancellation,
    )

    assert result.steps == 4
    assert counter.passes == 4 + 2  # the steps, plus scoring the start and the end image
