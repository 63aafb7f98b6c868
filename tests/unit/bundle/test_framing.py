"""The model's framing: warping a crop out of an image (edge pixels repeated beyond it), cutting a
bundle's ``input.framing`` box out of a face crop the same way in training and in the service,
and laying maps back over the upload."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from service.bundle.format import read_meta
from service.bundle.framing import frame, framing_matrix, template_in_frame, warp
from service.bundle.preprocess import Preprocessor
from service.faces.aligned import WHOLE_IMAGE_MAX_SIDE, whole_image
from service.faces.choice import choose_face
from training.preprocess import Preprocessing

BOX = (0.06, 0.2, 0.94, 1.08)


@pytest.fixture
def photo() -> Image.Image:
    rng = np.random.default_rng(0)
    return Image.fromarray((rng.random((90, 120, 3)) * 255).astype(np.uint8))


def test_warp_inside_the_image_is_pils_affine_transform(photo):
    inverse = np.array([[0.7, 0.1, 20.0], [-0.1, 0.7, 15.0]])  # crop pixel -> image pixel
    matrix = np.linalg.inv(np.vstack([inverse, [0, 0, 1]]))[:2]  # image pixel -> crop pixel
    ours = np.asarray(warp(photo, matrix, (50, 40)), dtype=int)
    pils = np.asarray(
        photo.transform(
            (50, 40), Image.Transform.AFFINE, tuple(inverse.ravel()), Image.Resampling.BILINEAR
        ),
        dtype=int,
    )
    assert ours.shape == (40, 50, 3)
    assert np.abs(ours - pils).max() <= 1  # rounding only
    same = warp(photo, np.array([[1.0, 0, 0], [0, 1.0, 0]]), photo.size)
    assert np.array_equal(np.asarray(same), np.asarray(photo))


def test_beyond_the_image_the_edge_pixels_are_repeated_not_black(photo):
    framed, _ = frame(photo, (0.0, 0.5, 1.0, 1.5))  # the lower half, then as much again below
    pixels = np.asarray(framed, dtype=int)
    last_row = np.asarray(photo, dtype=int)[-1]
    assert framed.size == photo.size
    assert np.abs(pixels[-20:] - last_row[None]).max() <= 1
    far_away = warp(photo, np.array([[1.0, 0, -500], [0, 1.0, -400]]), (4, 3))
    assert np.array_equal(np.asarray(far_away)[0, 0], np.asarray(photo)[-1, -1])
    grey = warp(photo.convert("L"), np.array([[1.0, 0, 5], [0, 1.0, 5]]), (8, 8))
    assert grey.mode == "L" and np.asarray(grey)[0, 0] == np.asarray(photo.convert("L"))[0, 0]


def test_the_framing_box_maps_to_the_whole_crop_and_landmarks_follow_it(photo):
    matrix = framing_matrix(BOX, photo.width, photo.height)
    corners = np.array([[BOX[0] * 120, BOX[1] * 90, 1], [BOX[2] * 120, BOX[3] * 90, 1]])
    np.testing.assert_allclose(corners @ matrix.T, [[0, 0], [120, 90]], atol=1e-9)
    inside = template_in_frame([[BOX[0], BOX[1]], [BOX[2], BOX[3]], [0.5, 0.64]], BOX)
    assert inside[:2] == [[0.0, 0.0], [1.0, 1.0]]
    assert inside[2] == pytest.approx([0.5, 0.5], abs=1e-4)


def test_a_whole_image_is_framed_and_its_maps_lie_back_over_the_upload(photo):
    chosen = choose_face(None, photo, detect=False, index=None, framing=BOX)
    assert chosen.source == "whole_image"
    assert (chosen.box.x, chosen.box.y, chosen.box.width, chosen.box.height) == (0, 0, 120, 90)
    assert chosen.aligned.crop.size == photo.size
    back = chosen.aligned.to_image(np.ones((30, 30), np.float32), photo.size)
    rows = back.mean(axis=1)
    top = int(BOX[1] * 90)
    assert rows[: top - 1].max() == 0  # above the box: not part of what the model saw
    assert rows[top + 2 :].min() > 0.8  # the box, down to the upload's bottom edge
    plain = whole_image(photo)
    assert plain.crop is photo and np.array_equal(plain.matrix, [[1, 0, 0], [0, 1, 0]])


def test_training_and_the_service_frame_a_face_crop_alike(default_bundle, celebs_root):
    """A crop uploaded with detect=false becomes the same model input the bundle was trained
    on: ``Preprocessing.load`` and the service's whole-image path share ``frame``."""
    spec = read_meta(default_bundle).input
    assert spec.framing is not None, "the default bundle is trained on dlib-chip framing"
    prep = Preprocessing.from_meta(spec.model_dump())
    path = sorted((celebs_root / "tom_hanks").iterdir())[0]
    trained = prep.standardise(torch.tensor(prep.load(path)).permute(2, 0, 1)[None])[0]
    served = Preprocessor(spec)(
        choose_face(
            None, Image.open(path).convert("RGB"), detect=False, index=None, framing=spec.framing
        ).aligned.crop
    )
    np.testing.assert_allclose(served, trained.numpy(), atol=1e-6)


def test_a_large_upload_is_framed_shrunk_and_its_map_still_lies_on_it():
    """A 6-megapixel upload sent whole is shrunk before framing (no full-size copy); the crop
    is what framing the shrunk image gives, and maps still land on the upload's pixels."""
    ramp = np.linspace(0, 255, 3000, dtype=np.float32)[None, :, None]
    big = Image.fromarray(np.broadcast_to(ramp, (2000, 3000, 3)).astype(np.uint8))
    chosen = choose_face(None, big, detect=False, index=None, framing=BOX)
    crop = chosen.aligned.crop
    assert crop.size == (WHOLE_IMAGE_MAX_SIDE, 400)
    assert (chosen.box.width, chosen.box.height) == (3000, 2000)
    # the crop's left and right edges are the ramp's values at the box's left and right
    row = np.asarray(crop, dtype=float)[200, :, 0]
    assert row[0] == pytest.approx(BOX[0] * 255, abs=2)
    assert row[-1] == pytest.approx(BOX[2] * 255, abs=2)
    back = chosen.aligned.to_image(np.ones((50, 50), np.float32), big.size)
    rows = back.mean(axis=1)
    assert rows[: int(BOX[1] * 2000) - 5].max() == 0 and rows[int(BOX[1] * 2000) + 5 :].min() > 0.8
