"""One renderer for every method: PNGs of the right size and mode, colours by sign, JSON rows."""

from __future__ import annotations

import io
import json

import numpy as np
import pytest
from PIL import Image

from service.explain.render import (
    DIVERGING,
    SEQUENTIAL,
    as_rows,
    blend_png,
    colorize,
    heatmap_png,
    overlay_png,
    rgba_png,
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
    image = _decode(heatmap_png(signed_map, (112, 90)))
    assert image.mode == "RGBA" and image.size == (112, 90)
    pixels = np.asarray(image)
    assert pixels[45, 56, 3] == 0  # zero is transparent
    red, blue = pixels[45, 105], pixels[45, 5]
    assert red[3] > 150 and red[0] > red[2]  # positive: opaque red
    assert blue[3] > 150 and blue[2] > blue[0]  # negative: opaque blue


def test_png_outside_the_box_is_transparent(signed_map):
    pixels = np.asarray(_decode(heatmap_png(signed_map, (300, 200), (100, 50, 200, 150))))
    assert pixels.shape == (200, 300, 4)
    assert pixels[:50, :, 3].max() == 0 and pixels[:, :100, 3].max() == 0
    assert pixels[50:150, 100:200, 3].max() > 150


def test_overlay_is_rgb_at_the_photo_size_and_blends(test_faces, handle):
    from service.explain import GradCam

    x, label, photo = test_faces[0]
    heatmap = GradCam(handle).attribute(x, target=label)
    image = _decode(overlay_png(photo, heatmap))
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


@pytest.mark.parametrize(("table", "name"), [(SEQUENTIAL, "inferno"), (DIVERGING, "RdBu_r")])
def test_lookup_tables_follow_matplotlib(table, name):
    colormaps = pytest.importorskip("matplotlib").colormaps
    expected = np.round(colormaps[name](np.linspace(0, 1, 256))[:, :3] * 255)
    assert np.abs(table.astype(int) - expected).max() <= 8  # 17 anchors: within 3%


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
