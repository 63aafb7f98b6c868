"""A small synchronous client of a running service, for benches that compare two services
(old against new, CUDA against CPU) through what users see: the HTTP answers.

Explanations are asked one at a time (``format=json``: the heatmap as numbers, in the upload's
coordinates); a heatmap grid is turned back into a map over the model input for the
faithfulness curves.
"""

from __future__ import annotations

import io
import time
from pathlib import Path
from typing import Any

import httpx
import numpy as np
from PIL import Image
from scipy.stats import spearmanr

from service.bundle.framing import Framing, frame
from service.bundle.preprocess import Preprocessor
from service.faces.aligned import whole_image

TIMEOUT_S = 300.0


class ServiceError(RuntimeError):
    """A non-200 answer where the bench expected one."""


class ServiceClient:
    """``url``'s ``GET /explain``, ``GET /model``, ``POST /predict`` and ``POST /explain/{m}``."""

    def __init__(self, url: str) -> None:
        self.http = httpx.Client(base_url=url, timeout=TIMEOUT_S)

    def close(self) -> None:
        self.http.close()

    def _checked(self, response: httpx.Response) -> dict[str, Any]:
        if response.status_code != 200:
            raise ServiceError(
                f"{response.request.method} {response.request.url.path}: "
                f"{response.status_code} {response.text[:300]}"
            )
        return response.json()

    def method_parameters(self) -> dict[str, dict[str, Any]]:
        """Every method of ``GET /explain`` with its parameters' defaults (``None`` where the
        schema gives none)."""
        listing = self._checked(self.http.get("/explain"))
        return {
            method["name"]: {
                name: schema.get("default")
                for name, schema in method["parameters"].get("properties", {}).items()
            }
            for method in listing["methods"]
        }

    def model_info(self) -> dict[str, Any]:
        return self._checked(self.http.get("/model"))

    def predict(self, photo: bytes, **params: Any) -> dict[str, Any]:
        return self._checked(self.http.post("/predict", params=params, files=_upload(photo)))

    def explain(self, method: str, photo: bytes, **params: Any) -> tuple[float, dict[str, Any]]:
        """Seconds from sending to the whole answer, and the answer (``format=json``)."""
        started = time.perf_counter()
        response = self.http.post(
            f"/explain/{method}", params={"format": "json", **params}, files=_upload(photo)
        )
        seconds = time.perf_counter() - started
        return seconds, self._checked(response)


def precision_of(model: dict[str, Any]) -> tuple[str, Any]:
    """The precision ``GET /model`` says serves (``fp32`` when it says none: the services
    before INT8 served FP32 alone), and the INT8 graph's recorded gates when meta.json has
    them (``precision.int8.gates``: accuracy drop, label agreement, AUROC drop, passed)."""
    runtime, meta = model.get("runtime", {}), model.get("meta", {})
    precision = runtime.get("precision") or "fp32 (not reported)"
    int8 = (meta.get("precision") or {}).get("int8") or {}
    gates = int8.get("gates")
    if not gates:
        return str(precision), None
    keys = ("accuracy_drop_points", "label_agreement", "auroc_drop", "passed")
    return str(precision), {key: gates.get(key) for key in keys}


def _upload(photo: bytes) -> dict[str, tuple[str, bytes, str]]:
    return {"file": ("face.png", photo, "image/png")}


def model_sized_png(photo: Path, size: tuple[int, int]) -> bytes:
    """``photo`` resized bilinearly to the model input's ``size`` = (width, height), as PNG.
    Sent whole (``detect=false``) to a bundle without ``input.framing``, it is the model input
    itself (no resize in the service), and its answer's grid is the method's map over that
    input, pixel for pixel; with a framing, the service cuts that box out of it first."""
    image = Image.open(photo).convert("RGB").resize(size, Image.Resampling.BILINEAR)
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()


def whole_upload_input(upload: bytes, preprocess: Preprocessor) -> np.ndarray:
    """The model input the service makes of ``upload`` sent whole (``detect=false``): cut to
    the bundle's framing box, when it has one, then preprocessed."""
    image = Image.open(io.BytesIO(upload)).convert("RGB")
    return preprocess(whole_image(image, preprocess.spec.framing).crop)


def grid_values(answer: dict[str, Any]) -> np.ndarray:
    """An explanation answer's heatmap grid, ``(height, width)`` float32 in the upload's
    coordinates (values as sent: scaled to the method's value range)."""
    return np.asarray(answer["heatmap"]["values"], dtype=np.float32)


def on_model_input(
    grid: np.ndarray, size: tuple[int, int], framing: Framing | None = None
) -> np.ndarray:
    """A grid laid on a whole-image upload (``detect=false``) as a map over the model input of
    ``size`` = (width, height): as it is for an upload of that size (``model_sized_png``) to a
    bundle without framing, else cut to the ``framing`` box and resized bilinearly (the grid
    was laid back through that box, so this is the model-input map up to interpolation)."""
    if framing is None and grid.shape == (size[1], size[0]):
        return grid
    image = Image.fromarray(grid.astype(np.float32), mode="F")
    if framing is not None:
        image = frame(image, framing)[0]
    return np.asarray(image.resize(size, Image.Resampling.BILINEAR), dtype=np.float32)


def rank_correlation(first: np.ndarray, second: np.ndarray) -> float:
    """Spearman rank correlation of two maps of one shape (1.0 when both are constant and
    equal; NaN when only one is constant)."""
    if np.array_equal(first, second):
        return 1.0
    return float(spearmanr(first.ravel(), second.ravel()).statistic)
