"""Photos, not crops: faces are found, the preferred one is classified, strangers are flagged."""
from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pytest
from PIL import Image, ImageFilter

import image_bytes as ib


def _scene(size: tuple[int, int], seed: int) -> Image.Image:
    """A textured, face-free background: smoothed colour noise."""
    rng = np.random.default_rng(seed)
    noise = rng.integers(0, 256, (size[1] // 8, size[0] // 8, 3), dtype=np.uint8)
    return Image.fromarray(noise).resize(size, Image.Resampling.BICUBIC).filter(ImageFilter.GaussianBlur(3))


def _paste(scene: Image.Image, face: Image.Image, centre: tuple[int, int], side: int, angle: float) -> None:
    """Paste ``face`` scaled to ``side`` pixels and rotated by ``angle`` degrees at ``centre``."""
    scaled = face.resize((side, side), Image.Resampling.BICUBIC).convert("RGBA")
    rotated = scaled.rotate(angle, resample=Image.Resampling.BICUBIC, expand=True)
    scene.paste(rotated, (centre[0] - rotated.width // 2, centre[1] - rotated.height // 2), rotated)


def _contains(box: dict, point: tuple[int, int]) -> bool:
    return box["x"] <= point[0] <= box["x"] + box["width"] and box["y"] <= point[1] <= box["y"] + box["height"]


@pytest.mark.parametrize(("side", "angle", "centre"), [(224, 12, (420, 260)), (170, -15, (250, 330))])
def test_a_face_pasted_into_a_scene_is_found_and_classified_as_its_crop(post_image, held_out_faces, side, angle, centre):
    agree = 0
    for index, (path, _) in enumerate(held_out_faces[::2]):
        crop = Image.open(path).convert("RGB")
        direct = post_image(path.read_bytes())
        scene = _scene((640, 480), seed=index)
        _paste(scene, crop, centre, side, angle)
        response = post_image(ib.encode(scene, "JPEG", quality=95), filename="scene.jpg")
        if direct.status_code != 200:
            continue  # a crop whose face the detector misses is covered elsewhere
        assert response.status_code == 200, response.text
        body = response.json()
        assert body["face_box"]["source"] == "detector"
        assert _contains(body["face_box"], centre)
        assert 0.3 * side <= body["face_box"]["width"] <= 1.2 * side
        agree += body["label"] == direct.json()["label"]
    assert agree >= len(held_out_faces[::2]) - 1, f"{agree} of {len(held_out_faces[::2])} agree"


def test_the_preferred_face_is_the_large_central_one_and_face_selects_another(post_image, held_out_faces):
    (big_path, big_id), (small_path, _) = held_out_faces[0], held_out_faces[6]
    scene = _scene((800, 600), seed=7)
    _paste(scene, Image.open(big_path).convert("RGB"), (400, 300), 230, 0)
    _paste(scene, Image.open(small_path).convert("RGB"), (110, 110), 150, 0)
    data = ib.encode(scene, "PNG")

    first = post_image(data).json()
    assert len(first["faces"]) == 2 and first["face_index"] == 0
    assert _contains(first["face_box"], (400, 300))
    assert first["faces"][0]["width"] > first["faces"][1]["width"]

    second = post_image(data, path="/predict?face=1").json()
    assert second["face_index"] == 1 and _contains(second["face_box"], (110, 110))

    beyond = post_image(data, path="/predict?face=2")
    assert beyond.status_code == 422
    assert beyond.json()["error"]["code"] == "face_index_out_of_range"
    assert "2 face(s)" in beyond.json()["error"]["message"]


def test_no_face_is_a_clear_422_and_detect_false_classifies_the_whole_image(post_image):
    scene = ib.encode(_scene((300, 240), seed=3), "PNG")
    response = post_image(scene)
    assert response.status_code == 422
    assert response.json()["error"]["code"] == "no_face"
    assert "detect=false" in response.json()["error"]["message"]

    whole = post_image(scene, path="/predict?detect=false")
    assert whole.status_code == 200
    assert whole.json()["face_box"] == {"x": 0, "y": 0, "width": 300, "height": 240, "source": "whole_image"}
    assert whole.json()["face_index"] is None and whole.json()["faces"] == []


def test_bad_face_parameters_are_422(post_image, face_bytes):
    for query in ("face=-1", "face=first", "detect=maybe"):
        response = post_image(face_bytes, path=f"/predict?{query}")
        assert response.status_code == 422, query
        assert response.json()["error"]["code"] == "validation_error"


def test_wild_photos_faces_are_found_near_the_centre_and_mostly_called_strangers(post_image, data_root: Path):
    photos = sorted((data_root / "wild_others").glob("*.jpg"))[:12]
    found, unknown = 0, 0
    for path in photos:
        response = post_image(path.read_bytes(), filename=path.name, content_type="image/jpeg")
        if response.status_code == 422:
            assert response.json()["error"]["code"] == "no_face"
            continue
        body = response.json()
        found += 1
        with Image.open(path) as image:
            width, height = image.size
        assert _contains(body["face_box"], (width // 2, height // 2)), (path.name, body["face_box"])
        unknown += not body["open_set"]["known"]
    assert found >= len(photos) - 1
    assert unknown >= found / 2, f"only {unknown} of {found} strangers were called unknown"


def test_held_out_celebrities_are_mostly_known(post_image, held_out_faces):
    verdicts = [post_image(path.read_bytes()).json().get("open_set") for path, _ in held_out_faces]
    verdicts = [v for v in verdicts if v]
    assert len(verdicts) >= len(held_out_faces) - 2
    assert sum(v["known"] for v in verdicts) >= 0.75 * len(verdicts)
    assert all(0 < v["threshold"] < 1 and (v["score"] >= v["threshold"]) == v["known"] for v in verdicts)
