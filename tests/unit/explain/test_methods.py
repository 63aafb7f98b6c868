"""Every method, on the real bundle and a real face: the contract of ``Explainer.attribute``."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image
from pydantic import ValidationError

from service.errors import UnknownClass
from service.explain import EXPLAINERS, Explainer, Heatmap, ModelHandle
from service.faces.aligned import whole_image

# Cheap settings so the whole folder stays fast; defaults are timed by bench/bench_explain.py.
# A method of the registry not listed here runs with its defaults.
CHEAP_PARAMS: dict[str, dict[str, object]] = {
    "gradient": {},
    "smoothgrad": {"samples": 4, "batch_size": 4},
    "integrated_gradients": {"steps": 8, "batch_size": 8},
    "gradcam": {},
    "layercam": {},
    "occlusion": {"window": 30, "stride": 15},
    "lime": {"num_samples": 64, "num_segments": 30},
}
FAST_PARAMS = {name: CHEAP_PARAMS.get(name, {}) for name in EXPLAINERS}
# One out-of-bounds value per method, and the limit its message must state.
OUT_OF_BOUNDS: dict[str, tuple[dict[str, object], str]] = {
    "smoothgrad": ({"samples": 65}, "less than or equal to 64"),
    "integrated_gradients": ({"steps": 1}, "greater than or equal to 2"),
    "gradcam": ({"layer": "x" * 65}, "at most 64 characters"),
    "layercam": ({"layer": "x" * 65}, "at most 64 characters"),
    "occlusion": ({"window": 97}, "less than or equal to 96"),
    "lime": ({"num_samples": 2001}, "less than or equal to 2000"),
}


def test_every_method_is_registered_under_its_name():
    assert set(CHEAP_PARAMS) <= set(EXPLAINERS)
    for name, method in EXPLAINERS.items():
        assert method.name == name


@pytest.fixture(scope="module")
def default_maps(handle: ModelHandle, face: tuple[np.ndarray, int]) -> dict[str, Heatmap]:
    x, _ = face
    return {
        name: method(handle).attribute(x, **FAST_PARAMS[name])
        for name, method in EXPLAINERS.items()
    }


@pytest.mark.parametrize("name", list(FAST_PARAMS))
def test_heatmap_shape_range_and_sign_convention(name, default_maps, face):
    x, _ = face
    heatmap = default_maps[name]
    assert heatmap.method == name
    assert heatmap.shape == x.shape[1:]
    assert heatmap.values.dtype == np.float32
    assert np.all(np.isfinite(heatmap.values))
    low, high = heatmap.value_range
    assert (low, high) == ((-1.0, 1.0) if heatmap.signed else (0.0, 1.0))
    assert heatmap.values.min() >= low and heatmap.values.max() <= high
    assert np.abs(heatmap.values).max() == pytest.approx(1.0)  # scaled by the peak
    assert heatmap.scale > 0
    assert not heatmap.values.flags.writeable


@pytest.mark.parametrize("name", list(FAST_PARAMS))
def test_default_target_is_the_predicted_class(name, default_maps, face, handle):
    x, _ = face
    heatmap = default_maps[name]
    assert heatmap.target == heatmap.predicted == int(np.argmax(handle.forward(x[None])[0]))
    assert heatmap.probabilities.sum() == pytest.approx(1.0)


@pytest.mark.parametrize("name", list(FAST_PARAMS))
def test_target_changes_the_map(name, default_maps, handle, face):
    x, _ = face
    default = default_maps[name]
    other_class = (default.target + 1) % len(default.logits)
    other = EXPLAINERS[name](handle).attribute(x, target=other_class, **FAST_PARAMS[name])
    assert other.target == other_class
    assert not np.allclose(other.values, default.values, atol=1e-3)


@pytest.mark.parametrize("name", list(FAST_PARAMS))
def test_map_laid_onto_the_upload_at_its_size(name, default_maps):
    upload = Image.new("RGB", (112, 96))
    placed = whole_image(upload).to_image(default_maps[name].values, upload.size)
    assert placed.shape == (96, 112)
    assert np.all(np.isfinite(placed))


@pytest.mark.parametrize("name", list(FAST_PARAMS))
@pytest.mark.parametrize("target", [-1, 8, 1.5, "0", True])
def test_bad_target_is_rejected(name, target, handle, face):
    with pytest.raises(UnknownClass, match="target"):
        EXPLAINERS[name](handle).attribute(face[0], target=target, **FAST_PARAMS[name])


@pytest.mark.parametrize("name", list(FAST_PARAMS))
def test_unknown_parameter_is_rejected(name, handle, face):
    with pytest.raises(ValidationError, match="Extra inputs are not permitted"):
        EXPLAINERS[name](handle).attribute(face[0], colour="red")


@pytest.mark.parametrize("name", list(OUT_OF_BOUNDS))
def test_out_of_bounds_parameter_is_rejected_with_its_limit(name, handle, face):
    params, limit = OUT_OF_BOUNDS[name]
    with pytest.raises(ValidationError, match=limit):
        EXPLAINERS[name](handle).attribute(face[0], **params)


@pytest.mark.parametrize("name", list(FAST_PARAMS))
def test_every_parameter_has_a_default_and_bounds_where_numeric(name):
    for field_name, field in EXPLAINERS[name].Params.model_fields.items():
        assert not field.is_required(), f"{name}.{field_name} has no default"
        if field.annotation in (int, float) or field.annotation == int | None:
            bounds = {type(m).__name__ for m in field.metadata}
            assert {"Ge", "Le"} <= bounds, f"{name}.{field_name} lacks ge/le bounds"


@pytest.mark.parametrize("shape", [(150, 150), (1, 3, 150, 150), (4, 150, 150)])
def test_input_must_be_one_chw_image(shape, handle):
    with pytest.raises(ValueError, match=r"\(3, H, W\)"):
        EXPLAINERS["gradient"](handle).attribute(np.zeros(shape, np.float32))


@pytest.mark.parametrize("name", [n for n, m in EXPLAINERS.items() if m.needs_twin])
def test_gradient_methods_need_the_twin(name, handle):
    with pytest.raises(ValueError, match="twin"):
        EXPLAINERS[name](ModelHandle(handle.forward))


def test_explainer_is_the_one_override_point():
    for method in EXPLAINERS.values():
        assert issubclass(method, Explainer)
        assert "attribute" not in vars(method)
