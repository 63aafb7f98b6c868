"""Heatmaps: their convention, and how one lands on the uploaded photo."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from service.bundle.format import read_meta
from service.explain import GradCam, Heatmap
from service.faces.aligned import whole_image
from service.faces.finder import FaceFinder

FACE = "jennifer_aniston/4337.png"  # a 112 x 112 face crop of the test split


def make_heatmap(values: np.ndarray, signed: bool = False) -> Heatmap:
    return Heatmap(
        values=values,
        method="test",
        target=0,
        signed=signed,
        value_range=(-1.0, 1.0) if signed else (0.0, 1.0),
        units="test units",
        scale=2.0,
        logits=np.array([2.0, 0.0], np.float32),
    )


def _paste(
    image: Image.Image,
    scale: float,
    angle: float,
    at: tuple[int, int],
    size: tuple[int, int],
    fill: float | tuple[int, int, int] = 0,
) -> Image.Image:
    """``image`` (RGB or float ``F``) enlarged by ``scale``, turned ``angle`` degrees
    counter-clockwise and pasted at ``at`` into a ``size`` canvas of ``fill``."""
    side = round(image.width * scale)
    turned = image.resize((side, side), Image.Resampling.BILINEAR).rotate(
        angle, Image.Resampling.BILINEAR, expand=True
    )
    mask = Image.new("L", (side, side), 255).rotate(angle, Image.Resampling.NEAREST, expand=True)
    canvas = Image.new(image.mode, size, fill)
    canvas.paste(turned, at, mask)
    return canvas


@pytest.mark.parametrize(("angle", "at"), [(15, (260, 120)), (-20, (50, 100))])
def test_a_heatmap_lands_on_its_face_in_the_upload(
    angle, at, celebs_root, default_bundle, handle, preprocess
):
    """The live path: detect, align, explain the aligned crop, lay the map back with
    ``AlignedFace.to_image``. A real face crop is pasted 2.5 times larger and turned into a grey
    720 x 540 photo; its map must land on the pasted face, matching the map of the crop alone
    put through the same paste. Measured with the framed bundle: 92.4 % of the mass on the face
    (the rest just under its chin, inside the model's framing), correlations 0.89 and 0.90; with
    the bundle before it, unframed, the same maps turned 90 degrees too far correlated 0.47 and
    0.48 (what a mapping that misses the rotation would give)."""
    crop = Image.open(celebs_root / FACE).convert("RGB")
    upload = _paste(crop, 2.5, angle, at, (720, 540), fill=(128, 128, 128))
    finder = FaceFinder(read_meta(default_bundle).face_alignment, workers=1)
    found = finder.detect(upload)
    assert len(found) == 1
    aligned = finder.align(upload, found[0])

    heatmap = GradCam(handle).attribute(preprocess(aligned.crop))
    laid = aligned.to_image(heatmap.values, upload.size)

    assert laid.shape == (540, 720)
    framed = whole_image(crop, read_meta(default_bundle).input.framing)
    own = GradCam(handle).attribute(preprocess(framed.crop), target=heatmap.target)
    own_on_crop = framed.to_image(own.values, crop.size)
    expected = np.asarray(_paste(Image.fromarray(own_on_crop, "F"), 2.5, angle, at, upload.size))
    face = np.asarray(_paste(Image.new("F", crop.size, 1.0), 2.5, angle, at, upload.size)) > 0
    # the mass lies on the pasted face; the model's framing (dlib's chip) reaches 8 % below the
    # crop, so some heat falls under its chin, on the grey beyond it (measured 0.924)
    assert laid[face].sum() / laid.sum() > 0.9
    assert np.corrcoef(laid.ravel(), expected.ravel())[0, 1] > 0.85


def test_values_are_read_only_float32_and_2d():
    heatmap = make_heatmap(np.ones((4, 4), np.float64))
    assert heatmap.values.dtype == np.float32 and not heatmap.values.flags.writeable
    with pytest.raises(ValueError, match=r"\(H, W\)"):
        make_heatmap(np.ones((1, 4, 4)))


def test_prediction_from_logits():
    heatmap = make_heatmap(np.ones((4, 4)))
    assert heatmap.predicted == 0
    assert heatmap.probabilities[0] == pytest.approx(1 / (1 + np.exp(-2.0)))
