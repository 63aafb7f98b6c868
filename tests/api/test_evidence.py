"""``/predict``'s ``open_set.evidence`` (the training faces behind the stranger verdict) and
``GET /evidence/{class_id}/{file}`` (their thumbnails), on real photos and the real bundle."""

from __future__ import annotations

import io
import json
import math
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np
import pytest
from fastapi.testclient import TestClient
from PIL import Image

from service.app import create_app
from service.bundle.evidence import FACES_PER_CLASS, THUMBNAIL_SIDE, gallery_similarities
from service.faces.choice import choose_face
from service.inference.model import ServingModel
from service.settings import Settings

from .conftest import API_KEY

NEAREST = "nearest_training_face_cosine"
# Training files whose own gallery row is their nearest through /predict's detection and
# alignment (the gallery is in the train list's order): first, middle and last rows.
OWN_ROWS = (0, 300, 1177)


@pytest.fixture(scope="module")
def train_split(default_bundle: Path) -> list[tuple[str, int]]:
    split = json.loads((default_bundle / "split.json").read_text())
    return [(file, label) for file, label in split["splits"]["train"]]


@pytest.fixture(scope="module")
def known_answers(held_out_faces, post_image) -> list[tuple[str, dict]]:
    """(class id, /predict answer) of two test-split photos per class."""
    return [(class_id, post_image(path.read_bytes()).json()) for path, class_id in held_out_faces]


@pytest.fixture(scope="module")
def stranger_answers(data_root: Path, serving_model: ServingModel, post_image) -> list[dict]:
    """/predict answers for three photos of each stranger held out of the bundle's calibration."""
    held_out = serving_model.meta.open_set.model_dump()["held_out"]["unknown_identities"]
    photos = [p for who in held_out for p in sorted((data_root / "others" / who).glob("*.png"))[:3]]
    assert len(photos) == 3 * len(held_out) >= 12
    return [post_image(path.read_bytes()).json() for path in photos]


def test_a_known_face_names_its_own_class_nearest_with_a_high_cosine(known_answers, train_split):
    listed = {file: label for file, label in train_split}
    for class_id, answer in known_answers:
        evidence = answer["open_set"]["evidence"]
        nearest = evidence["nearest"]

        assert nearest["class_id"] == class_id, (class_id, nearest)
        assert nearest["cosine"] >= 0.96, (class_id, nearest)
        assert nearest["file"].startswith(class_id + "/") and nearest["file"] in listed
        assert evidence["per_class"][0]["class_id"] == class_id
        assert evidence["per_class"][0]["faces"][0] == {
            k: v for k, v in nearest.items() if k in ("file", "cosine", "thumbnail")
        }


def test_every_class_lists_its_nearest_training_faces_most_similar_first(
    known_answers, serving_model, train_split
):
    listed = {file: label for file, label in train_split}
    ids = [c.id for c in serving_model.meta.classes]
    _, answer = known_answers[0]
    per_class = answer["open_set"]["evidence"]["per_class"]

    assert sorted(entry["class_id"] for entry in per_class) == sorted(ids)
    best = [entry["faces"][0]["cosine"] for entry in per_class]
    assert best == sorted(best, reverse=True)
    for entry in per_class:
        cosines = [face["cosine"] for face in entry["faces"]]
        assert len(cosines) == FACES_PER_CLASS
        assert cosines == sorted(cosines, reverse=True)
        assert all(-1.0 <= c <= 1.0 for c in cosines)
        assert entry["name"] == serving_model.meta.classes[ids.index(entry["class_id"])].name
        for face in entry["faces"]:
            assert ids[listed[face["file"]]] == entry["class_id"]
            assert face["thumbnail"] == f"/evidence/{entry['class_id']}/{Path(face['file']).name}"


def test_the_evidence_is_the_gallery_searched_with_the_face_embedding(
    post_image, serving_model: ServingModel, held_out_faces, train_split
):
    """Each class's listed faces are its gallery rows nearest to the face's embedding
    (computed here apart from the service), with their cosines; the nearest is the best of all."""
    path, _ = held_out_faces[0]
    answer = post_image(path.read_bytes()).json()
    framing = serving_model.meta.input.framing
    with Image.open(path) as photo:
        face = choose_face(
            serving_model.faces, photo.convert("RGB"), detect=True, index=None, framing=framing
        )
    x = serving_model.preprocess(face.aligned.crop)
    output = serving_model.engine.run_rows(x[None])[0]
    _, embedding = serving_model.engine.split_row(output, len(serving_model.meta.classes))
    similarities = gallery_similarities(embedding, serving_model.open_set.gallery)
    labels = np.array([label for _, label in train_split])
    order = np.argsort(-similarities, kind="stable")
    ids = [c.id for c in serving_model.meta.classes]
    row_of = {file: i for i, (file, _) in enumerate(train_split)}
    evidence = answer["open_set"]["evidence"]

    for entry in evidence["per_class"]:
        rows = [row_of[face["file"]] for face in entry["faces"]]
        expected = order[labels[order] == ids.index(entry["class_id"])][:FACES_PER_CLASS]
        assert rows == expected.tolist(), entry["class_id"]
        cosines = [face["cosine"] for face in entry["faces"]]
        assert cosines == pytest.approx(similarities[rows].tolist(), abs=1e-5)
    assert row_of[evidence["nearest"]["file"]] == int(order[0])


def test_a_training_photo_finds_its_own_gallery_row(post_image, celebs_root, train_split):
    """Row i of the gallery is split.json's i-th training file: through the service's own
    detection and preprocessing, a training photo's nearest training face is itself."""
    for row in OWN_ROWS:
        file, _ = train_split[row]
        nearest = post_image((celebs_root / file).read_bytes()).json()["open_set"]["evidence"]
        assert nearest["nearest"]["file"] == file
        assert nearest["nearest"]["cosine"] >= 0.98


@pytest.mark.slow
def test_training_photos_across_the_list_find_their_own_rows(post_image, celebs_root, train_split):
    """Every fourth photo of the train list, every class, start to end, through /predict
    (~10 s; a row shifted anywhere in the gallery shifts every row after it): nearly every
    photo's nearest training face is itself, and every one is among its class's listed faces.
    (The few that are not the nearest have a near-duplicate in the data: the gallery was
    embedded when the model was exported, the photos here are found and aligned again.)"""
    photos = train_split[::4]
    own_nearest = own_listed = 0
    for file, _ in photos:
        evidence = post_image((celebs_root / file).read_bytes()).json()["open_set"]["evidence"]
        own_nearest += evidence["nearest"]["file"] == file
        own_listed += any(f["file"] == file for e in evidence["per_class"] for f in e["faces"])

    assert own_nearest >= 0.97 * len(photos)
    assert own_listed >= 0.99 * len(photos)


def test_a_strangers_nearest_training_face_is_further_than_a_known_faces(
    known_answers, stranger_answers
):
    known = [answer["open_set"]["evidence"]["nearest"]["cosine"] for _, answer in known_answers]
    strangers = [answer["open_set"]["evidence"]["nearest"]["cosine"] for answer in stranger_answers]

    assert float(np.median(strangers)) < min(known)
    assert float(np.mean(strangers)) < float(np.mean(known)) - 0.02
    assert sum(not answer["open_set"]["known"] for answer in stranger_answers) >= 0.9 * len(
        strangers
    )


def test_the_nearest_cosine_is_the_part_the_score_used(
    known_answers, stranger_answers, client: TestClient
):
    """The score again from the reported parts and meta.json's fusion, and its nearest-face
    part is the evidence's nearest cosine (one gallery product serves both)."""
    fusion = client.get("/model").json()["meta"]["open_set"]["fusion"]
    for answer in [a for _, a in known_answers] + stranger_answers:
        verdict = answer["open_set"]
        parts = verdict["parts"]
        assert list(parts) == fusion["components"]
        assert parts[NEAREST] == verdict["evidence"]["nearest"]["cosine"]
        assert parts["max_softmax_probability"] == pytest.approx(answer["probability"], abs=1e-12)
        z = sum(
            w * (parts[name] - m) / s
            for name, m, s, w in zip(
                fusion["components"],
                fusion["mean"],
                fusion["scale"],
                fusion["weights"],
                strict=True,
            )
        )
        assert verdict["score"] == pytest.approx(1 / (1 + math.exp(-(z + fusion["bias"]))), 1e-12)


def test_a_listed_training_face_has_a_jpeg_thumbnail(
    known_answers, client: TestClient, celebs_root: Path
):
    _, answer = known_answers[0]
    evidence = answer["open_set"]["evidence"]
    assert evidence["thumbnails"] is True and evidence["thumbnails_note"] is None

    response = client.get(evidence["nearest"]["thumbnail"])

    assert response.status_code == 200
    assert response.headers["content-type"] == "image/jpeg"
    assert "max-age=" in response.headers["cache-control"]
    assert "private" in response.headers["cache-control"]
    image = Image.open(io.BytesIO(response.content))
    assert image.format == "JPEG" and image.mode == "RGB"
    assert max(image.size) <= THUMBNAIL_SIDE
    # the picture of that very file
    with Image.open(celebs_root / evidence["nearest"]["file"]) as original:
        expected = np.asarray(original.convert("RGB").resize(image.size), dtype=np.float64)
    assert np.abs(np.asarray(image, dtype=np.float64) - expected).mean() < 6
    assert client.head(evidence["nearest"]["thumbnail"]).status_code == 200


def test_a_thumbnail_needs_the_api_key(known_answers, client: TestClient):
    _, answer = known_answers[0]
    url = answer["open_set"]["evidence"]["nearest"]["thumbnail"]

    response = client.get(url, headers={"X-API-Key": ""})

    assert response.status_code == 401
    assert response.json()["error"]["code"] == "missing_api_key"


def test_files_outside_the_train_split_have_no_thumbnail(
    client: TestClient, held_out_faces, train_split
):
    test_file, class_id = held_out_faces[0]
    train_file, _ = train_split[0]
    other_class = "tom_hanks" if not train_file.startswith("tom_hanks/") else "keanu_reeves"
    refused = {
        # a real photo of the class, in the test split
        f"/evidence/{class_id}/{test_file.name}": "unknown_training_face",
        # a training file asked for under another class
        f"/evidence/{other_class}/{Path(train_file).name}": "unknown_training_face",
        "/evidence/tom_hanks/no-such-face.png": "unknown_training_face",
        f"/evidence/nobody/{Path(train_file).name}": "unknown_training_face",
        "/evidence/tom_hanks/meta.json": "unknown_training_face",
    }
    for url, code in refused.items():
        response = client.get(url)
        assert response.status_code == 404, url
        assert response.json()["error"]["code"] == code, (url, response.text)
    message = client.get(f"/evidence/nobody/{Path(train_file).name}").json()["error"]["message"]
    assert "tom_hanks" in message  # the valid classes are listed


@pytest.mark.parametrize(
    "url",
    [
        "/evidence/tom_hanks/..%2F..%2F..%2Fmodels%2Fceleb8%2Fmeta.json",
        "/evidence/tom_hanks/..%2Fkeanu_reeves%2F5616.png",
        "/evidence/tom_hanks/%2Fetc%2Fpasswd",
        "/evidence/tom_hanks//etc/passwd",
        "/evidence/tom_hanks/tom_hanks%2F9804.png",  # a listed file's whole split path
        "/evidence/..%2F..%2Fshared%2Fdata%2Fcelebs8/tom_hanks/9804.png",
        "/evidence/%2E%2E/%2E%2E/README.md",
        "/evidence/tom_hanks/%2E%2E",
        "/evidence/tom_hanks/9804.png%00.txt",
    ],
)
def test_paths_reach_no_file_but_the_listed_ones(client: TestClient, url: str):
    response = client.get(url)

    assert response.status_code == 404, url
    assert response.headers["content-type"].startswith("application/json")
    assert response.json()["error"]["code"] in {"not_found", "unknown_training_face"}


@pytest.fixture(scope="module")
def app_with(make_settings: Callable[..., Settings]) -> Iterator[Callable[..., TestClient]]:
    """``app_with(**settings)``: a started client of an app with other settings (closed at the
    end of the module)."""
    opened: list[TestClient] = []

    def start(**overrides: object) -> TestClient:
        client = TestClient(create_app(make_settings(**overrides)), headers={"X-API-Key": API_KEY})
        client.__enter__()
        opened.append(client)
        return client

    yield start
    for client in opened:
        client.__exit__(None, None, None)


def test_no_thumbnails_when_the_setting_is_empty(app_with, face_bytes):
    client = app_with(evidence_dir="")
    evidence = client.post("/predict", files={"file": ("f.png", face_bytes, "image/png")}).json()[
        "open_set"
    ]["evidence"]

    assert evidence["thumbnails"] is False
    assert "CELEBXAI_EVIDENCE_DIR" in evidence["thumbnails_note"]
    assert evidence["nearest"]["thumbnail"] is None
    assert all(f["thumbnail"] is None for e in evidence["per_class"] for f in e["faces"])
    assert evidence["nearest"]["file"]  # the files are still named
    class_id, name = evidence["nearest"]["class_id"], Path(evidence["nearest"]["file"]).name
    response = client.get(f"/evidence/{class_id}/{name}")
    assert response.status_code == 404
    assert response.json()["error"]["code"] == "evidence_unavailable"
    assert "CELEBXAI_EVIDENCE_DIR" in response.json()["error"]["message"]


def test_the_setting_names_the_folder_thumbnails_come_from(
    app_with, celebs_root, tmp_path, train_split
):
    """A folder holding one class's images: its files are served, another class's listed files
    are 404 evidence_unavailable (listed, but not in the folder); a folder that is not there
    turns thumbnails off."""
    (tmp_path / "tom_hanks").symlink_to(celebs_root / "tom_hanks")
    client = app_with(evidence_dir=str(tmp_path))
    hanks = next(file for file, _ in train_split if file.startswith("tom_hanks/"))
    reeves = next(file for file, _ in train_split if file.startswith("keanu_reeves/"))

    assert client.get(f"/evidence/{hanks}").status_code == 200
    missing = client.get(f"/evidence/{reeves}")
    assert missing.status_code == 404
    assert missing.json()["error"]["code"] == "evidence_unavailable"
    assert str(tmp_path) not in missing.text  # no server path in an answer

    gone = app_with(evidence_dir=str(tmp_path / "not-there"))
    answer = gone.get(f"/evidence/{hanks}")
    assert answer.status_code == 404
    assert answer.json()["error"]["code"] == "evidence_unavailable"
    assert str(tmp_path) not in answer.text
