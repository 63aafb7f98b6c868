"""Gradient methods on the twin: the maths against plain autograd, and no state left behind."""

from __future__ import annotations

import threading
from concurrent.futures import Future

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from service.common.cancellation import Cancellation
from service.common.twin import ONE_FACE_THREADS, input_gradients, start_one_face_thread
from service.errors import UnknownLayer
from service.explain import (
    GradCam,
    GradientSaliency,
    IntegratedGradients,
    ModelHandle,
    SmoothGrad,
)
from service.explain.layercam import LayerCam, finest_layer


def _input_gradient(twin, x: np.ndarray, target: int) -> torch.Tensor:
    inputs = torch.from_numpy(x[None].copy()).requires_grad_(True)
    with torch.enable_grad():
        logits, _ = twin(inputs)
        (gradient,) = torch.autograd.grad(logits[0, target], inputs)
    return gradient[0]


def test_gradient_saliency_is_abs_gradient_max_over_channels(handle, face):
    x, label = face
    expected = _input_gradient(handle.twin, x, label).abs().amax(dim=0).numpy()
    heatmap = GradientSaliency(handle).attribute(x, target=label)
    np.testing.assert_allclose(heatmap.values, expected / expected.max(), atol=1e-5)
    assert heatmap.scale == pytest.approx(float(expected.max()), rel=1e-5)


def test_gradcam_matches_the_formula_at_the_bundle_layer(handle, face):
    x, label = face
    inputs = torch.from_numpy(x[None].copy()).requires_grad_(True)
    with torch.enable_grad():
        logits, activations = handle.twin(inputs)
        activation = activations[handle.gradcam_layer]
        (gradient,) = torch.autograd.grad(logits[0, label], activation)
    cam = F.relu((gradient.mean(dim=(2, 3), keepdim=True) * activation.detach()).sum(1, True))
    cam = F.interpolate(cam, size=x.shape[1:], mode="bilinear", align_corners=False)[0, 0]
    expected = (cam / cam.max()).numpy()
    np.testing.assert_allclose(
        GradCam(handle).attribute(x, target=label).values, expected, atol=1e-5
    )


def test_layercam_matches_the_formula_at_the_finest_layer(handle, face, bundle_meta):
    """ReLU(sum_c ReLU(gradient) * A_c) at the deepest activation of the finest resolution:
    layer1 (35 x 35) of the face ResNet, not the stem beside it nor Grad-CAM's layer3."""
    x, label = face
    inputs = torch.from_numpy(x[None].copy()).requires_grad_(True)
    with torch.enable_grad():
        logits, activations = handle.twin(inputs)
        assert finest_layer(activations) == "layer1"
        activation = activations["layer1"]
        (gradient,) = torch.autograd.grad(logits[0, label], activation)
    cam = F.relu((F.relu(gradient) * activation.detach()).sum(1, True))
    cam = F.interpolate(cam, size=x.shape[1:], mode="bilinear", align_corners=False)[0, 0]
    expected = (cam / cam.max()).numpy()
    heatmap = LayerCam(handle).attribute(x, target=label)
    np.testing.assert_allclose(heatmap.values, expected, atol=1e-5)
    coarse = LayerCam(handle).attribute(x, target=label, layer=handle.gradcam_layer)
    assert not np.allclose(heatmap.values, coarse.values, atol=1e-2)
    with pytest.raises(UnknownLayer, match="valid: stem, layer1"):
        LayerCam(handle).attribute(x, target=label, layer="layer9")


def test_gradcam_layer_can_be_chosen(handle, face, bundle_meta):
    x, label = face
    deep, shallow = (
        GradCam(handle).attribute(x, target=label, layer=layer.name)
        for layer in (bundle_meta.layers[-2], bundle_meta.layers[1])
    )
    assert not np.allclose(deep.values, shallow.values, atol=1e-2)


def test_integrated_gradients_complete_to_the_logit_difference(handle, face):
    """Completeness (Sundararajan et al. 2017): attributions sum to f(x) - f(baseline)."""
    x, label = face
    heatmap = IntegratedGradients(handle).attribute(x, target=label, steps=64, baseline="zero")
    total = float(heatmap.values.astype(np.float64).sum() * heatmap.scale)
    logits = handle.forward(np.stack([x, np.zeros_like(x)]))
    expected = float(logits[0, label] - logits[1, label])
    assert total == pytest.approx(expected, rel=0.1, abs=0.05)


def test_smoothgrad_same_seed_same_map_and_global_rng_untouched(handle, face):
    x, _ = face
    torch.manual_seed(1234)
    before = torch.get_rng_state()
    first = SmoothGrad(handle).attribute(x, samples=4, seed=7)
    second = SmoothGrad(handle).attribute(x, samples=4, seed=7)
    other = SmoothGrad(handle).attribute(x, samples=4, seed=8)
    assert torch.equal(torch.get_rng_state(), before)
    np.testing.assert_array_equal(first.values, second.values)
    assert not np.allclose(first.values, other.values)


def test_smoothgrad_seeds_and_restores_torchs_generator_while_it_holds_the_twin(
    handle, face, monkeypatch
):
    """captum draws SmoothGrad's noise from torch's process-wide generator: the seed and the
    restore both happen while the request holds the twin, so no concurrent SmoothGrad draws
    its noise from a state another one set (its map would then depend on the load)."""
    from service.common import twin as twin_module

    x, _ = face
    seen: list[tuple[str, bool]] = []
    seed, restore = torch.manual_seed, torch.set_rng_state

    def seeding(value):
        seen.append(("seed", twin_module._TWIN_LOCK.locked()))
        return seed(value)

    def restoring(state):
        seen.append(("restore", twin_module._TWIN_LOCK.locked()))
        return restore(state)

    monkeypatch.setattr(torch, "manual_seed", seeding)
    monkeypatch.setattr(torch, "set_rng_state", restoring)
    SmoothGrad(handle).attribute(x, samples=4, seed=7)
    assert ("seed", True) in seen and ("restore", True) in seen
    assert all(held for _, held in seen), seen


def _hooks(module: torch.nn.Module) -> int:
    return sum(
        len(m._forward_hooks) + len(m._forward_pre_hooks) + len(m._backward_hooks)
        for m in module.modules()
    )


def test_nothing_is_left_behind_after_an_error(handle, face):
    x, _ = face
    parameters = list(handle.twin.parameters())
    flags = [p.requires_grad for p in parameters]
    hooks = _hooks(handle.twin)
    with torch.no_grad():
        with pytest.raises(UnknownLayer, match="valid: stem"):
            GradCam(handle).attribute(x, layer="no_such_layer")
        assert not torch.is_grad_enabled()
    assert [p.requires_grad for p in parameters] == flags
    assert _hooks(handle.twin) == hooks
    assert all(p.grad is None for p in parameters)


def test_input_gradients_restores_state_when_the_block_raises(handle):
    twin = handle.twin
    parameters = list(twin.parameters())
    flags = [p.requires_grad for p in parameters]
    parameters[0].requires_grad_(True)  # a caller's setting must survive, not be reset to False
    try:
        with torch.no_grad(), pytest.raises(RuntimeError, match="boom"):
            with input_gradients(twin):
                assert torch.is_grad_enabled()
                assert not any(p.requires_grad for p in parameters)
                raise RuntimeError("boom")
        assert parameters[0].requires_grad
        assert [p.requires_grad for p in parameters[1:]] == flags[1:]
    finally:
        parameters[0].requires_grad_(flags[0])


def test_one_face_passes_run_on_a_thread_of_their_own_with_one_torch_thread(handle, face):
    """Plain gradient and Grad-CAM run their pass on the one-face thread, torch on
    ``ONE_FACE_THREADS`` there; SmoothGrad's batches run in the caller's thread on the
    process's count, which neither the caller nor a thread started afterwards loses. An error
    in the pass reaches the caller. The one-thread map is the all-thread map to float32
    rounding."""
    start_one_face_thread()
    seen: list[tuple[str, int]] = []
    real = handle.twin

    class Watched(torch.nn.Module):
        def forward(self, inputs):
            seen.append((threading.current_thread().name, torch.get_num_threads()))
            return real(inputs)

    watched = ModelHandle(handle.forward, Watched(), handle.gradcam_layer)
    threads = torch.get_num_threads()
    one_thread = GradientSaliency(watched).attribute(face[0]).values
    GradCam(watched).attribute(face[0])
    SmoothGrad(watched).attribute(face[0], samples=4, stop="fixed")

    caller = threading.current_thread().name
    assert [count for _, count in seen[:2]] == [ONE_FACE_THREADS] * 2
    assert all(name.startswith("twin-one-face") for name, _ in seen[:2])
    assert {name for name, _ in seen[2:]} == {caller} and {n for _, n in seen[2:]} == {threads}
    assert torch.get_num_threads() == threads
    later: list[int] = []

    def first_torch_work() -> None:
        torch.ones(64).add(1)  # the thread's first parallel operation takes its count
        later.append(torch.get_num_threads())

    thread = threading.Thread(target=first_torch_work)
    thread.start()
    thread.join()
    assert later == [threads]

    def broken(inputs):
        raise RuntimeError("twin failed on the one-face thread")

    class Broken(torch.nn.Module):
        forward = staticmethod(broken)

    with pytest.raises(RuntimeError, match="one-face thread"):
        GradientSaliency(ModelHandle(handle.forward, Broken(), None)).attribute(face[0])

    gradient = _input_gradient(real, face[0], int(np.argmax(handle.forward(face[0][None]))))
    all_threads = gradient.abs().amax(dim=0).numpy()
    np.testing.assert_allclose(one_thread, all_threads / all_threads.max(), rtol=0, atol=1e-2)


def test_a_failing_twin_leaves_grad_mode_as_it_was(handle, face):
    def broken_twin(inputs):
        raise RuntimeError("twin failed")

    class Broken(torch.nn.Module):
        forward = staticmethod(broken_twin)

    failing = ModelHandle(handle.forward, Broken(), handle.gradcam_layer)
    for method in (GradientSaliency, GradCam, IntegratedGradients):
        with torch.no_grad():
            with pytest.raises(RuntimeError, match="twin failed"):
                method(failing).attribute(face[0])
            assert not torch.is_grad_enabled()


class WatchedPrediction(Future):
    """The ONNX prediction as ``forward_soon`` hands it back, recording when it is read."""

    def __init__(self, logits: np.ndarray, events: list[str]) -> None:
        super().__init__()
        self.set_result(logits)
        self.events = events

    def result(self, timeout: float | None = None) -> np.ndarray:
        self.events.append("prediction read")
        return super().result(timeout)


@pytest.mark.parametrize("method", [GradientSaliency, GradCam])
def test_one_pass_methods_run_the_twin_while_the_prediction_runs(handle, face, method):
    """Plain gradient and Grad-CAM queue the prediction first, run the twin's forward pass, and
    read the prediction only for the target of the backward pass: the map, target and logits
    are those of the plain (prediction first) order."""
    x, _ = face
    events: list[str] = []

    def forward_soon(batch: np.ndarray) -> Future:
        events.append("prediction queued")
        return WatchedPrediction(handle.forward(batch), events)

    cancellation = Cancellation(on_batch=lambda: events.append("twin pass"))
    overlapped = ModelHandle(
        handle.forward, handle.twin, handle.gradcam_layer, cancellation, forward_soon
    )

    heatmap = method(overlapped).attribute(x)
    plain = method(handle).attribute(x)

    assert events == ["prediction queued", "twin pass", "prediction read"]
    np.testing.assert_array_equal(heatmap.values, plain.values)
    np.testing.assert_array_equal(heatmap.logits, plain.logits)
    assert heatmap.target == plain.target == int(np.argmax(plain.logits))
