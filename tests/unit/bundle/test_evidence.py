"""The gallery's training faces (split.json read row for row with the gallery), the nearest
faces per class, the score made from one gallery product, and where thumbnails come from."""

from __future__ import annotations

import io
import json
import logging
import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from service.bundle.evidence import (
    SETTING,
    THUMBNAIL_SIDE,
    gallery_similarities,
    images_folder,
    load_training_faces,
    open_set_parts,
)
from service.bundle.format import BundleError
from service.bundle.open_set import MAX_SOFTMAX, NEAREST_FACE, open_set_rule


@pytest.fixture
def bundle_copy(default_bundle, tmp_path) -> Path:
    """A folder holding a copy of the bundle's split.json (what ``load_training_faces`` reads)."""
    shutil.copy(default_bundle / "split.json", tmp_path / "split.json")
    return tmp_path


def _rewrite_train(bundle: Path, change) -> None:
    split = json.loads((bundle / "split.json").read_text())
    split["splits"]["train"] = change(split["splits"]["train"])
    (bundle / "split.json").write_text(json.dumps(split))


def test_the_train_list_names_every_gallery_row(default_bundle, meta, gallery):
    faces = load_training_faces(default_bundle, meta, gallery, "")
    split = json.loads((default_bundle / "split.json").read_text())["splits"]["train"]

    assert faces is not None and len(faces.files) == len(gallery) == len(split)
    assert faces.files[0] == split[0][0] and faces.files[-1] == split[-1][0]
    assert faces.labels.tolist() == [label for _, label in split]
    for row in (0, 517, len(split) - 1):
        file, label = split[row]
        assert faces.row(label, Path(file).name) == row
    assert faces.row(split[0][1] + 1, Path(split[0][0]).name) is None  # another class
    assert faces.row(split[0][1], "../" + Path(split[0][0]).name) is None


def test_a_train_list_longer_or_shorter_than_the_gallery_stops_the_load(bundle_copy, meta, gallery):
    _rewrite_train(bundle_copy, lambda train: train[:-1])

    with pytest.raises(BundleError, match=r"lists 1177 training files .* has 1178 rows"):
        load_training_faces(bundle_copy, meta, gallery, None)


@pytest.mark.parametrize(
    "entry",
    [
        ["../secrets/1.png", 0],
        ["/etc/passwd", 0],
        ["tom_hanks\\..\\..\\x.png", 7],
        ["tom_hanks/1.png", 8],  # no class 8
        ["tom_hanks/1.png", "7"],
        ["", 0],
        "tom_hanks/1.png",
    ],
)
def test_an_entry_outside_the_data_root_stops_the_load(bundle_copy, meta, gallery, entry):
    _rewrite_train(bundle_copy, lambda train: [entry, *train[1:]])

    with pytest.raises(BundleError, match=r"splits.train\[0\] is not"):
        load_training_faces(bundle_copy, meta, gallery, None)


def test_a_name_listed_twice_in_a_class_stops_the_load(bundle_copy, meta, gallery):
    _rewrite_train(bundle_copy, lambda train: [train[1], *train[1:]])

    with pytest.raises(BundleError, match="twice in class 0"):
        load_training_faces(bundle_copy, meta, gallery, None)


def test_without_split_json_there_is_no_evidence_and_a_warning(tmp_path, meta, gallery, caplog):
    with caplog.at_level(logging.WARNING, logger="service.bundle.evidence"):
        assert load_training_faces(tmp_path, meta, gallery, None) is None

    assert "no split.json" in caplog.text


def test_without_a_gallery_there_is_nothing_to_name(default_bundle, meta):
    assert load_training_faces(default_bundle, meta, None, None) is None


def test_the_score_from_one_gallery_product_is_the_rules_score(meta, gallery):
    """``open_set_parts`` reads the similarities the evidence reads; its score is the rule's,
    bit for bit, on embeddings of every kind (random, near a gallery row, opposite one)."""
    rule = open_set_rule(meta, gallery, None)
    rng = np.random.default_rng(7)
    classes = len(meta.classes)
    embeddings = [
        rng.normal(size=gallery.shape[1]).astype(np.float32),
        gallery[42] * 3 + rng.normal(scale=0.01, size=gallery.shape[1]).astype(np.float32),
        -gallery[1000],
    ]
    for embedding in embeddings:
        logits = rng.normal(scale=4, size=classes)
        similarities = gallery_similarities(embedding, gallery)

        score, parts = open_set_parts(rule, logits, similarities)

        assert score == rule(logits, embedding)
        assert list(parts) == [MAX_SOFTMAX, NEAREST_FACE]
        assert parts[NEAREST_FACE] == float(similarities.max())
    assert gallery_similarities(gallery[42] * 3, gallery)[42] == pytest.approx(1.0, abs=1e-6)


def test_the_nearest_faces_per_class_in_order_ties_in_list_order(default_bundle, meta, gallery):
    faces = load_training_faces(default_bundle, meta, gallery, "")
    similarities = np.zeros(len(gallery), np.float32)
    similarities[[5, 9, 20]] = 0.5  # class 0: equal cosines keep the list's order
    berry = int(np.flatnonzero(faces.labels == 1)[3])
    similarities[berry] = 0.9  # a face of class 1, nearest of all

    evidence = faces.evidence(similarities, per_class=3)

    assert evidence.nearest.row == berry and evidence.nearest.class_index == 1
    assert evidence.nearest.cosine == pytest.approx(0.9)
    assert [index for index, _ in evidence.per_class][:2] == [1, 0]
    assert [face.row for face in evidence.per_class[1][1]] == [5, 9, 20]
    assert sorted(index for index, _ in evidence.per_class) == list(range(len(meta.classes)))
    assert all(len(near) == 3 for _, near in evidence.per_class)


def test_thumbnails_are_small_jpegs_of_the_listed_file(default_bundle, meta, gallery, tmp_path):
    folder = tmp_path / "data"
    faces = load_training_faces(default_bundle, meta, gallery, str(folder / "absent"))
    assert faces is not None and faces.images is None
    with pytest.raises(LookupError, match=SETTING):
        faces.thumbnail(0)

    # a large photo under a listed name: the thumbnail is scaled to fit
    (folder / Path(faces.files[0]).parent).mkdir(parents=True)
    Image.new("RGB", (640, 480), (200, 30, 30)).save(folder / faces.files[0])
    faces = load_training_faces(default_bundle, meta, gallery, str(folder))
    jpeg = faces.thumbnail(0)
    with Image.open(io.BytesIO(jpeg)) as image:
        assert image.format == "JPEG" and image.size == (THUMBNAIL_SIDE, 84)
    with pytest.raises(OSError):
        faces.thumbnail(1)  # listed, but not in the folder


def test_where_thumbnails_come_from(tmp_path, monkeypatch):
    (tmp_path / "data" / "celebs").mkdir(parents=True)
    monkeypatch.chdir(tmp_path)

    assert images_folder(None, "data/celebs") == ((tmp_path / "data" / "celebs").resolve(), "")
    folder, note = images_folder(None, "../elsewhere")
    assert folder is None and SETTING in note and "../elsewhere" in note
    assert images_folder(None, "")[0] is None
    folder, note = images_folder("", "data/celebs")
    assert folder is None and "turned off" in note
    assert images_folder(str(tmp_path / "data"), "data/celebs")[0] == (tmp_path / "data")
    folder, note = images_folder(str(tmp_path / "nope"), "data/celebs")
    assert folder is None and str(tmp_path) not in note
