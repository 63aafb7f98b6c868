"""One renderer for every method: PNGs of the right size and mode, colours by sign, JSON rows."""

from __future__ import annotations

import io
import json

import numpy as np
import pytest
from PIL import Image

from service.faces.aligned import AlignedFace, whole_image
from service.render.colormap import DIVERGING, SEQUENTIAL
from service.render.png import (
    COLORIZE_ROWS,
    MAX_RENDER_PIXELS,
    _colorize_rows,
    as_rows,
    blend_png,
    colorize,
    render_factor,
    rgba_png,
    scaled_size,
)

from .test_heatmap import make_heatmap


def _decode(data: bytes) -> Image.Image:
    image = Image.open(io.BytesIO(data))
    assert image.format == "PNG"
    image.load()
    return image


@pytest.fixture
def signed_map():
    values = np.zeros((150, 150), np.float32)
    values[:, :50] = -1.0
    values[:, 100:] = 1.0
    return make_heatmap(values, signed=True)


def test_png_is_rgba_at_the_upload_size(signed_map):
    upload = Image.new("RGB", (112, 90))
    image = _decode(rgba_png(whole_image(upload).to_image(signed_map.values, upload.size), True))
    assert image.mode == "RGBA" and image.size == (112, 90)
    pixels = np.asarray(image)
    assert pixels[45, 56, 3] == 0  # zero is transparent
    red, blue = pixels[45, 105], pixels[45, 5]
    assert red[3] > 150 and red[0] > red[2]  # positive: opaque red
    assert blue[3] > 150 and blue[2] > blue[0]  # negative: opaque blue


def test_png_outside_the_face_crop_is_transparent(signed_map):
    # a 100 x 100 crop cut at (100, 50) out of a 300 x 200 upload
    crop = AlignedFace(
        Image.new("RGB", (100, 100)), np.array([[1.0, 0, -100], [0, 1.0, -50]]), None
    )
    pixels = np.asarray(_decode(rgba_png(crop.to_image(signed_map.values, (300, 200)), True)))
    assert pixels.shape == (200, 300, 4)
    assert pixels[:49, :, 3].max() == 0 and pixels[:, :99, 3].max() == 0
    assert pixels[151:, :, 3].max() == 0 and pixels[:, 201:, 3].max() == 0
    assert pixels[50:150, 100:200, 3].max() > 150


def test_overlay_is_rgb_at_the_photo_size_and_blends(test_faces, handle):
    from service.explain import GradCam

    x, label, photo = test_faces[0]
    heatmap = GradCam(handle).attribute(x, target=label)
    placed = whole_image(photo).to_image(heatmap.values, photo.size)
    image = _decode(blend_png(photo, placed, heatmap.signed))
    assert image.mode == "RGB" and image.size == photo.size
    difference = np.abs(np.asarray(image, np.int16) - np.asarray(photo, np.int16))
    assert difference.max() > 50  # the map shows
    assert (difference.sum(axis=2) == 0).any()  # and unimportant pixels keep the photo


def test_unsigned_uses_the_sequential_map_with_alpha_by_magnitude():
    rgba = colorize(np.array([[0.0, 0.5, 1.0]], np.float32), signed=False, opacity=1.0)
    np.testing.assert_array_equal(rgba[0, :, 3], [0, 128, 255])
    np.testing.assert_array_equal(rgba[0, 0, :3], SEQUENTIAL[0])
    np.testing.assert_array_equal(rgba[0, 2, :3], SEQUENTIAL[255])


def test_signed_uses_the_diverging_map_centred_on_zero():
    rgba = colorize(np.array([[-1.0, 0.0, 1.0]], np.float32), signed=True, opacity=0.5)
    np.testing.assert_array_equal(rgba[0, :, 3], [128, 0, 128])
    np.testing.assert_array_equal(rgba[0, 0, :3], DIVERGING[0])
    np.testing.assert_array_equal(rgba[0, 2, :3], DIVERGING[255])
    assert DIVERGING[128].min() > 230  # near white in the middle


def test_bad_opacity_is_rejected():
    with pytest.raises(ValueError, match="opacity"):
        colorize(np.zeros((2, 2)), signed=False, opacity=1.5)


def test_rows_are_json_friendly_and_rounded():
    rows = as_rows(np.array([[0.123456, -1.0], [0.5, 2e-7]], np.float32), decimals=3)
    assert rows == [[0.123, -1.0], [0.5, 0.0]]
    assert json.loads(json.dumps(rows)) == rows


def test_a_map_placed_by_any_mapping_renders_at_its_size(test_faces):
    _, _, photo = test_faces[0]
    placed = np.zeros((photo.height, photo.width), np.float32)
    placed[10:30, 20:60] = 0.9  # e.g. a face crop mapped back through an affine transform
    heat = _decode(rgba_png(placed, signed=False))
    blended = _decode(blend_png(photo, placed, signed=False))
    assert (heat.mode, heat.size) == ("RGBA", photo.size)
    assert (blended.mode, blended.size) == ("RGB", photo.size)
    assert np.asarray(heat)[20, 40, 3] > 150 and np.asarray(heat)[50, 5, 3] == 0


@pytest.mark.parametrize("signed", [False, True])
def test_colorize_in_row_blocks_equals_the_whole_at_once(signed: bool):
    rng = np.random.default_rng(1)
    low = -1.2 if signed else -0.2
    values = rng.uniform(low, 1.2, (COLORIZE_ROWS * 2 + 37, 61)).astype(np.float32)
    np.testing.assert_array_equal(
        colorize(values, signed, 0.7), _colorize_rows(values, signed, 0.7)
    )


@pytest.mark.parametrize(
    ("size", "expected"),
    [
        ((112, 90), (112, 90)),  # small uploads render at their own size
        ((2048, 2048), (2048, 2048)),  # up to the limit
        ((6000, 6000), (2048, 2048)),  # a 36-megapixel upload: scaled to the limit
        ((8000, 1000), (5793, 724)),  # the aspect ratio is kept
    ],
)
def test_renders_are_at_most_max_render_pixels(size, expected):
    factor = render_factor(size)
    assert scaled_size(size, factor) == expected
    width, height = scaled_size(size, factor)
    assert width * height <= MAX_RENDER_PIXELS


def test_an_overlay_of_a_scaled_down_render_scales_the_photo_down_with_it(test_faces):
    _, _, photo = test_faces[0]
    large = photo.resize((photo.width * 4, photo.height * 4))
    placed = np.zeros((photo.height, photo.width), np.float32)  # the render's size
    placed[10:30, 20:60] = 1.0
    blended = _decode(blend_png(large, placed, signed=False, opacity=0.0))
    assert (blended.mode, blended.size) == ("RGB", photo.size)
    # opacity 0: the photo itself, scaled down (bilinear after a box reduction) to the render
    reference = np.asarray(large.resize(photo.size, Image.Resampling.BILINEAR), np.int16)
    assert np.abs(np.asarray(blended, np.int16) - reference).mean() < 2.0
