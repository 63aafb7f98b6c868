"""A method call: parameters checked once, then run as they are; the plan of its passes is the
number of passes it runs."""

from __future__ import annotations

import numpy as np
import pytest
from pydantic import ValidationError

from service.common.cancellation import Cancellation
from service.errors import TooCostly, UnknownLayer
from service.explain import EXPLAINERS, ModelHandle
from service.explain.base import CallBounds, MethodCall
from service.explain.lime import LimeParams
from service.explain.occlusion import OcclusionParams

SMALL = {
    "gradient": {},
    "gradcam": {},
    "layercam": {},
    "smoothgrad": {"samples": 5, "batch_size": 2},
    "integrated_gradients": {"steps": 6, "batch_size": 4},
    "occlusion": {"window": 32, "stride": 24},
    "lime": {"num_samples": 40, "batch_size": 16, "seed": 3},
    "rise": {"num_masks": 40, "batch_size": 16},
    "fastshap": {},
}


def test_a_call_is_checked_by_its_method_parameters() -> None:
    call = MethodCall.of(EXPLAINERS["occlusion"], {"window": "32", "stride": "8"})
    assert isinstance(call.params, OcclusionParams) and call.params.window == 32
    assert call.name == "occlusion"
    with pytest.raises(ValidationError, match="must not exceed window"):
        MethodCall.of(EXPLAINERS["occlusion"], {"window": 8, "stride": 16})
    with pytest.raises(ValidationError, match="num_samples"):
        MethodCall.of(EXPLAINERS["lime"], {"num_samples": 5})
    with pytest.raises(ValidationError, match="window"):  # another method's parameter
        MethodCall.of(EXPLAINERS["lime"], {"window": 24})


def test_run_takes_only_its_own_checked_parameters(
    handle: ModelHandle, face: tuple[np.ndarray, int]
) -> None:
    x, _ = face
    with pytest.raises(TypeError, match="LimeParams"):
        EXPLAINERS["lime"](handle).run(x, None, OcclusionParams())
    with pytest.raises(TypeError, match="LimeParams"):
        EXPLAINERS["lime"](handle).run(x, None, {"num_samples": 40})  # type: ignore[arg-type]
    assert isinstance(MethodCall.of(EXPLAINERS["lime"], {}).params, LimeParams)


@pytest.mark.parametrize("method", list(EXPLAINERS))
def test_a_call_runs_as_attribute_does_and_as_many_passes_as_it_plans(
    handle: ModelHandle, face: tuple[np.ndarray, int], method: str
) -> None:
    x, label = face
    call = MethodCall.of(EXPLAINERS[method], SMALL[method])
    passes = 0

    def count() -> None:
        nonlocal passes
        passes += 1

    cancellation = Cancellation(on_batch=count)

    def forward(batch: np.ndarray) -> np.ndarray:
        cancellation.batch()  # as the engine does before every pass it runs
        return handle.forward(batch)

    counted = ModelHandle(
        forward, handle.twin, handle.gradcam_layer, cancellation, one_pass=handle.one_pass
    )
    run = EXPLAINERS[method](counted).run(x, label, call.params)
    attributed = EXPLAINERS[method](handle).attribute(x, label, **SMALL[method])
    np.testing.assert_array_equal(run.values, attributed.values)
    assert run.params == attributed.params == call.params.model_dump()
    # every forward pass goes through the cancellation's batch(): the plan is what runs
    assert passes == call.planned_passes((x.shape[1], x.shape[2])), method


# The served bundle's twin activations and input side (models/celebs8/meta.json).
BOUNDS = CallBounds(("stem", "layer1", "layer2", "layer3", "layer4", "layer5"), (150, 150), 64)
# Each method at its most expensive parameters: the passes docs/explanations.md states.
MAXIMUM = {
    "gradient": ({}, 2),
    "gradcam": ({}, 2),
    "layercam": ({}, 2),
    "smoothgrad": ({"samples": 64}, 9),
    "integrated_gradients": ({"steps": 256}, 17),
    "occlusion": ({"window": 4, "stride": 4, "strategy": "exhaustive"}, 47),
    "lime": ({"num_samples": 2000}, 64),
    "rise": ({"num_masks": 4000}, 126),
    "fastshap": ({}, 2),
}


@pytest.mark.parametrize("method", list(EXPLAINERS))
def test_each_method_at_its_maximum_plans_the_passes_the_docs_state(method: str) -> None:
    values, passes = MAXIMUM[method]
    call = MethodCall.of(EXPLAINERS[method], values)
    assert call.planned_passes(BOUNDS.side) == passes
    refused = passes > BOUNDS.max_passes
    try:
        MethodCall.of(EXPLAINERS[method], values, BOUNDS)
    except TooCostly as error:
        assert refused, error
        assert f"plans {passes} forward passes" in error.message
        assert "the 64 one request may ask" in error.message
        assert EXPLAINERS[method].cost_hint in error.message
    else:
        assert not refused


def test_the_cost_limit_allows_exactly_max_passes() -> None:
    rise = EXPLAINERS["rise"]
    assert MethodCall.of(rise, {"num_masks": 2016}, BOUNDS).planned_passes((150, 150)) == 64
    with pytest.raises(TooCostly, match="plans 65 forward passes.*lower num_masks"):
        MethodCall.of(rise, {"num_masks": 2017}, BOUNDS)


def test_a_gradcam_layer_the_model_lacks_is_refused_before_any_work() -> None:
    gradcam = EXPLAINERS["gradcam"]
    with pytest.raises(UnknownLayer, match=r"'\.\./\.\./etc' is not an activation.*layer5"):
        MethodCall.of(gradcam, {"layer": "../../etc"}, BOUNDS)
    assert MethodCall.of(gradcam, {"layer": "layer2"}, BOUNDS).params.model_dump() == {
        "layer": "layer2"
    }
    assert MethodCall.of(gradcam, {}, BOUNDS).params.model_dump() == {"layer": None}
    # without bounds (a library caller) the name is checked when the pass runs
    assert MethodCall.of(gradcam, {"layer": "../../etc"}).params.model_dump()
