"""A method call: parameters checked once, then run as they are; the plan of its passes is the
number of passes it runs."""

from __future__ import annotations

import numpy as np
import pytest
from pydantic import ValidationError

from service.common.cancellation import Cancellation
from service.explain import EXPLAINERS, ModelHandle
from service.explain.base import MethodCall
from service.explain.lime import LimeParams
from service.explain.occlusion import OcclusionParams

SMALL = {
    "gradient": {},
    "gradcam": {},
    "smoothgrad": {"samples": 5, "batch_size": 2},
    "integrated_gradients": {"steps": 6, "batch_size": 4},
    "occlusion": {"window": 32, "stride": 24},
    "lime": {"num_samples": 40, "batch_size": 16, "seed": 3},
    "rise": {"num_masks": 40, "batch_size": 16},
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

    counted = ModelHandle(forward, handle.twin, handle.gradcam_layer, cancellation)
    run = EXPLAINERS[method](counted).run(x, label, call.params)
    attributed = EXPLAINERS[method](handle).attribute(x, label, **SMALL[method])
    np.testing.assert_array_equal(run.values, attributed.values)
    assert run.params == attributed.params == call.params.model_dump()
    # every forward pass goes through the cancellation's batch(): the plan is what runs
    assert passes == call.planned_passes((x.shape[1], x.shape[2])), method
