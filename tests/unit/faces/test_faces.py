"""Face geometry: the similarity fit, mapping maps back onto the photo, which face is preferred."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from service.bundle.preprocess import Box
from service.faces.aligned import AlignedFace, similarity_transform, whole_image
from service.faces.finder import preference


def _matrix(angle_deg: float, scale: float, shift: tuple[float, float]) -> np.ndarray:
    a = np.deg2rad(angle_deg)
    rotation = scale * np.array([[np.cos(a), -np.sin(a)], [np.sin(a), np.cos(a)]])
    return np.hstack([rotation, np.array(shift)[:, None]])


def test_similarity_transform_recovers_rotation_scale_and_shift():
    points = np.array([[10, 20], [40, 22], [25, 50], [12, 60], [38, 61]], float)
    truth = _matrix(17, 1.7, (5, -8))
    mapped = points @ truth[:, :2].T + truth[:, 2]
    assert np.allclose(similarity_transform(points, mapped), truth, atol=1e-9)


def _squared_error(matrix: np.ndarray, points: np.ndarray, mapped: np.ndarray) -> float:
    return float(((points @ matrix[:, :2].T + matrix[:, 2] - mapped) ** 2).sum())


def test_similarity_transform_is_the_least_squares_fit_of_noisy_landmarks():
    """Against landmarks that no similarity maps exactly, no nearby rotation, scale or shift
    fits them better than the one returned."""
    rng = np.random.default_rng(0)
    points = np.array([[10, 20], [40, 22], [25, 50], [12, 60], [38, 61]], float)
    for _ in range(20):
        mapped = points @ _matrix(rng.uniform(-40, 40), rng.uniform(0.5, 2), (3, 4))[:, :2].T
        mapped += rng.normal(0, 2, mapped.shape)
        matrix = similarity_transform(points, mapped)

        a, b = matrix[0, 0], matrix[1, 0]  # the fit's scale x cos and scale x sin
        for da, db, dx, dy in rng.normal(0, 0.01, (50, 4)):
            nearby = np.array(
                [[a + da, -(b + db), matrix[0, 2] + dx], [b + db, a + da, matrix[1, 2] + dy]]
            )
            assert _squared_error(nearby, points, mapped) >= _squared_error(matrix, points, mapped)


def test_similarity_transform_never_mirrors():
    points = np.array([[10, 20], [40, 22], [25, 50], [12, 60], [38, 61]], float)
    mirrored = points * [-1, 1]
    matrix = similarity_transform(points, mirrored)
    assert np.linalg.det(matrix[:, :2]) > 0


def test_to_image_puts_a_crop_map_back_where_the_crop_came_from():
    # a 20x20 crop taken at (30, 40) of a 100x80 photo, no rotation
    crop = Image.new("RGB", (20, 20))
    matrix = np.array([[1.0, 0, -30], [0, 1.0, -40]])
    values = np.zeros((20, 20), np.float32)
    values[5:10, 5:10] = 1.0
    back = AlignedFace(crop, matrix, None).to_image(values, (100, 80))
    assert back.shape == (80, 100)
    assert back[45:50, 35:40].min() == pytest.approx(1.0)
    assert back.sum() == pytest.approx(25.0, abs=1.0)
    assert back[:40].max() == 0 and back[:, :30].max() == 0


def test_to_image_follows_a_rotated_crop():
    crop = Image.new("RGB", (40, 40))
    matrix = _matrix(90, 1.0, (0, 0))  # image -> crop: rotate by 90 degrees about the origin
    matrix[:, 2] = [40, 0]  # keep the crop inside: (x, y) -> (40 - y, x)
    values = np.zeros((40, 40), np.float32)
    values[2:6, 30:38] = 1.0  # top-right strip of the crop
    back = AlignedFace(crop, matrix, None).to_image(values, (40, 40))
    ys, xs = np.nonzero(back > 0.5)
    # crop (cx, cy) = (40 - y, x)  =>  image x = cy, y = 40 - cx
    assert set(np.unique(xs)) <= set(range(1, 7)) and set(np.unique(ys)) <= set(range(1, 12))


def test_whole_image_is_the_identity():
    image = Image.new("RGB", (30, 20))
    aligned = whole_image(image)
    values = np.random.default_rng(0).random((20, 30)).astype(np.float32)
    assert np.allclose(aligned.to_image(values, (30, 20)), values, atol=1e-5)


def test_preference_is_the_largest_face_discounted_off_centre():
    centre_small = Box(45, 45, 10, 10)
    corner_big = Box(0, 0, 13, 13)
    centre_big = Box(40, 40, 20, 20)
    assert preference(centre_big, 100, 100) > preference(centre_small, 100, 100)
    assert preference(centre_small, 100, 100) > preference(corner_big, 100, 100) * 0.5
    assert preference(Box(0, 0, 10, 10), 100, 100) < preference(centre_small, 100, 100)
