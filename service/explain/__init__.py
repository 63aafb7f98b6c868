"""Explanation methods: which pixels made the model choose a class.

Every method is an ``Explainer`` (``base.py``) with one call shape, like captum's::

    handle = ModelHandle(forward=onnx_run, twin=twin, gradcam_layer=meta.gradcam_layer)
    heatmap = EXPLAINERS["occlusion"](handle).attribute(x, target=None, window=24, stride=12)

``x`` is one ``(3, H, W)`` float32 model input; ``target`` defaults to the predicted class; the
keyword arguments are the method's ``Params`` (defaults and bounds as data). The result is a
``Heatmap`` in model-input coordinates; ``service.render`` draws it over the uploaded image, and
the explanation use case (``service.explanations``) keeps recent results in the app's cache.
Adding a method: one module, one line below (docs/architecture.md, "Where to add").
"""

from __future__ import annotations

from service.explain.base import Explainer, MethodParams, ModelHandle
from service.explain.cache import array_digest, cache_key
from service.explain.gradcam import GradCam
from service.explain.gradient import GradientSaliency
from service.explain.heatmap import Heatmap
from service.explain.integrated_gradients import IntegratedGradients
from service.explain.layercam import LayerCam
from service.explain.lime import Lime
from service.explain.occlusion import Occlusion
from service.explain.one_pass import FastShap
from service.explain.rise import Rise
from service.explain.smoothgrad import SmoothGrad

# The single list of methods: GET /explain, POST /explain/{method}, the page's panels, the API
# tests and the faithfulness bench all read it. In the page's order.
METHODS: tuple[type[Explainer], ...] = (
    GradientSaliency,
    SmoothGrad,
    IntegratedGradients,
    GradCam,
    LayerCam,
    Occlusion,
    Lime,
    Rise,
    FastShap,
)
EXPLAINERS: dict[str, type[Explainer]] = {method.name: method for method in METHODS}
GRADIENT_METHODS = tuple(name for name, method in EXPLAINERS.items() if method.needs_twin)

__all__ = [
    "EXPLAINERS",
    "GRADIENT_METHODS",
    "Explainer",
    "Heatmap",
    "MethodParams",
    "ModelHandle",
    "array_digest",
    "cache_key",
]
