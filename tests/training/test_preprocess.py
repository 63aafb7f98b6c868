"""One preprocessing: training, serving and synthesis turn the same real photo into the same
model input, for the committed bundle's spec and for one that uses every option (BGR, a value
range that does not start at 0)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from service.bundle.format import read_meta
from service.bundle.preprocess import InputSpec, Preprocessor
from service.faces.aligned import whole_image
from service.insight.maximize import PixelCodec
from training.preprocess import Preprocessing

FACE = "jennifer_aniston/4337.png"  # a 112 x 112 face crop: every path resizes it to 150 x 150
EVERY_OPTION = InputSpec(
    height=150,
    width=150,
    mean=(0.1, 0.2, 0.3),
    std=(0.5, 0.6, 0.7),
    value_range=(-1.0, 1.0),
    channel_order="BGR",
)


@pytest.fixture(params=["bundle", "every_option"])
def spec(request, default_bundle: Path) -> InputSpec:
    return read_meta(default_bundle).input if request.param == "bundle" else EVERY_OPTION


def test_training_serving_and_synthesis_agree_on_a_real_image(spec: InputSpec, celebs_root: Path):
    path = celebs_root / FACE
    prep = Preprocessing.from_meta(spec.model_dump())
    pixels = np.array(prep.load(path))  # (150, 150, 3) uint8: what training caches and augments

    training = prep.standardise(torch.from_numpy(pixels).permute(2, 0, 1)[None])[0].numpy()
    # the service's whole-image path (detect=false): cut to the framing box, when there is one
    serving = Preprocessor(spec)(whole_image(Image.open(path).convert("RGB"), spec.framing).crop)
    codec = PixelCodec(spec)
    synthesis = codec.to_input(pixels).numpy()

    assert training.shape == serving.shape == synthesis.shape == (3, 150, 150)
    np.testing.assert_allclose(training, serving, rtol=0, atol=1e-6)
    np.testing.assert_allclose(synthesis, serving, rtol=0, atol=1e-6)
    # synthesis reads model input back to the same 8-bit pixels
    np.testing.assert_array_equal(codec.to_pixels(torch.from_numpy(serving)), pixels)


def test_the_value_range_and_channel_order_are_honoured(celebs_root: Path):
    pixels = Preprocessing.from_meta(EVERY_OPTION.model_dump()).load(celebs_root / FACE)
    x = Preprocessor(EVERY_OPTION)(Image.fromarray(pixels))
    # model channel 0 is blue; its value runs from -1 (pixel 0) to 1 (pixel 255)
    blue = -1.0 + pixels[..., 2].astype(np.float64) / 255.0 * 2.0
    np.testing.assert_allclose(x[0], (blue - 0.1) / 0.5, rtol=0, atol=1e-5)
    low, high = PixelCodec(EVERY_OPTION).bounds()
    mean, std = np.array(EVERY_OPTION.mean), np.array(EVERY_OPTION.std)
    np.testing.assert_allclose(low.ravel(), (-1 - mean) / std, rtol=0, atol=1e-6)
    np.testing.assert_allclose(high.ravel(), (1 - mean) / std, rtol=0, atol=1e-6)


def test_the_spec_round_trips_through_meta(default_bundle: Path):
    spec = read_meta(default_bundle).input
    prep = Preprocessing.from_meta(spec.model_dump(mode="json"))
    assert InputSpec.model_validate(prep.to_meta()) == spec
