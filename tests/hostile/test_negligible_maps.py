"""A black photo has no evidence to show: the running service says so instead of stretching
rounding noise (~1e-7) into a confident map, and real faces are never flagged.

Against the README's ``python -m service`` with the real bundle; the baseline is the image's
own mean colour (``baseline=mean``), so every perturbation of a flat image is the image itself.
"""

from __future__ import annotations

import io

import httpx
import numpy as np
import pytest
from image_bytes import face_png
from PIL import Image

from .conftest import ServiceProcess

# the directory's shared service process (tests/hostile/conftest.py), started as users start it
pytestmark = pytest.mark.slow

FLAT_METHODS = [
    ("/saliency", {"method": "integrated_gradients", "baseline": "mean"}),
    ("/occlusion", {"baseline": "mean"}),
    ("/lime", {"baseline": "mean"}),
]
ALL_METHODS = [
    ("/saliency", {"method": method})
    for method in ("gradient", "smoothgrad", "integrated_gradients", "gradcam")
] + [("/occlusion", {}), ("/lime", {})]


def _black_png() -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", (150, 150)).save(buffer, format="PNG")
    return buffer.getvalue()


def _post(service: ServiceProcess, path: str, data: bytes, **params: str) -> httpx.Response:
    response = httpx.post(
        f"{service.url}{path}",
        params={"detect": "false", **params},
        files={"file": ("photo.png", data, "image/png")},
        timeout=120,
    )
    assert response.status_code == 200, response.text
    return response


@pytest.mark.parametrize(("path", "params"), FLAT_METHODS, ids=lambda v: str(v))
def test_a_black_photo_gives_a_negligible_map(
    service_process: ServiceProcess, path: str, params: dict[str, str]
):
    black = _black_png()
    heatmap = _post(service_process, path, black, **params).json()["heatmap"]
    assert heatmap["negligible"] is True
    assert heatmap["scale"] < 1e-4
    assert np.abs(np.asarray(heatmap["values"])).max() < 1e-4  # not stretched to +-1

    png = _post(service_process, path, black, format="png", **params)
    assert png.headers["X-Heatmap-Negligible"] == "true"
    alpha = np.asarray(Image.open(io.BytesIO(png.content)))[..., 3]
    assert not alpha.any()  # nothing drawn
    overlay = _post(service_process, path, black, format="overlay", **params)
    assert not np.asarray(Image.open(io.BytesIO(overlay.content))).any()  # still black


@pytest.mark.parametrize(("path", "params"), ALL_METHODS, ids=lambda v: str(v))
def test_a_real_face_is_not_negligible(
    service_process: ServiceProcess, celebs_root, path: str, params: dict[str, str]
):
    face = face_png(celebs_root, "keanu_reeves")
    heatmap = _post(service_process, path, face, **params).json()["heatmap"]
    assert heatmap["negligible"] is False
    assert np.abs(np.asarray(heatmap["values"])).max() > 0.5  # scaled to its full range
    png = _post(service_process, path, face, format="png", **params)
    assert png.headers["X-Heatmap-Negligible"] == "false"
    assert np.asarray(Image.open(io.BytesIO(png.content)))[..., 3].any()
