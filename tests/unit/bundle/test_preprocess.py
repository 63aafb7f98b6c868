from __future__ import annotations

import image_bytes as ib
import numpy as np
import pytest
from PIL import Image

from service.bundle.preprocess import InputSpec, PixelAffine, Preprocessor

DLIB_SPEC = InputSpec(
    height=150,
    width=150,
    resize="bilinear",
    value_range=(0, 255),
    mean=(122.782, 117.001, 104.298),
    std=(256.0, 256.0, 256.0),
)


def test_output_is_chw_float32_standardised_as_the_spec_says():
    image = ib.noise_image((112, 112))

    x = Preprocessor(DLIB_SPEC)(image)

    resized = np.asarray(image.resize((150, 150), Image.Resampling.BILINEAR), dtype=np.float64)
    expected = (resized - np.array(DLIB_SPEC.mean)) / np.array(DLIB_SPEC.std)
    assert x.shape == (3, 150, 150) and x.dtype == np.float32
    np.testing.assert_allclose(x, expected.transpose(2, 0, 1), atol=1e-5)


def test_unit_value_range_and_bgr_order():
    spec = InputSpec(
        height=4,
        width=4,
        value_range=(0, 1),
        channel_order="BGR",
        mean=(0.5, 0.5, 0.5),
        std=(0.25, 0.25, 0.25),
    )
    image = Image.new("RGB", (4, 4), (255, 0, 51))

    x = Preprocessor(spec)(image)

    np.testing.assert_allclose(x[:, 0, 0], [(0.2 - 0.5) / 0.25, -2.0, 2.0], atol=1e-6)


@pytest.mark.parametrize(
    ("field", "value", "valid"),
    [
        ("resize", "magic", "bilinear"),
        ("channel_order", "GBR", "RGB"),
        ("layout", "NHWC", "NCHW"),
        ("dtype", "float16", "float32"),
    ],
)
def test_unsupported_spec_fails_and_lists_the_valid_choices(field, value, valid):
    spec = DLIB_SPEC.model_copy(update={field: value})

    with pytest.raises(ValueError, match=valid):
        Preprocessor(spec)


def test_non_rgb_input_is_rejected():
    with pytest.raises(ValueError, match="RGB"):
        Preprocessor(DLIB_SPEC)(Image.new("L", (10, 10)))


@pytest.mark.parametrize("order", ["RGB", "BGR"])
def test_pixel_affine_is_exactly_scale_then_shift_in_float32_and_contiguous(order):
    """The model input is bit for bit ``pixels * scale + shift`` in float32 (what training and
    the parity checks assume), laid out contiguously, the pixels untouched."""
    affine = PixelAffine(DLIB_SPEC.model_copy(update={"channel_order": order}))
    pixels = np.asarray(ib.noise_image((150, 150))).transpose(2, 0, 1)  # a strided CHW view
    before = pixels.copy()
    channels = pixels[::-1] if order == "BGR" else pixels

    x = affine(pixels)

    expected = channels.astype(np.float32) * affine.scale[:, None, None]
    expected = expected + affine.shift[:, None, None]
    np.testing.assert_array_equal(x, expected)
    assert x.dtype == np.float32 and x.flags["C_CONTIGUOUS"]
    np.testing.assert_array_equal(pixels, before)
