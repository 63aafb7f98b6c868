"""The open-set gallery's rows as training faces: which file each row is, and which rows lie
nearest to a face.

The gallery (meta.json ``open_set.gallery``) holds one normalised embedding per training face,
in the order of split.json's train list: row ``i`` is ``splits.train[i]`` (training embeds the
train split in that order). Read beside the gallery, the list lets an answer name the training
faces behind the score's ``nearest_training_face_cosine`` part, and lets ``GET /evidence``
serve thumbnails of exactly those files: a file is found by looking its class and name up in
the list, never by joining a client's words onto a path.

The bundle never carries the images. Thumbnails are read from a folder the operator names
(the ``evidence_dir`` setting; by default the data root that split.json records, relative to
the working directory, where it exists).
"""

from __future__ import annotations

import io
import json
import logging
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath

import numpy as np
from PIL import Image

from service.bundle.format import BundleError, BundleMeta
from service.bundle.open_set import NEAREST_FACE, OpenSetRule, component_scores, normalise

log = logging.getLogger(__name__)

SPLIT_FILE = "split.json"
FACES_PER_CLASS = 3
"""the nearest training faces listed per class in an answer"""
THUMBNAIL_SIDE = 112
"""the longest side of a thumbnail (pixels); a thumbnail is never larger than its image"""
THUMBNAIL_QUALITY = 85
SETTING = "CELEBXAI_EVIDENCE_DIR"


@dataclass(frozen=True)
class NearFace:
    """One training face near the face asked about."""

    row: int
    """its gallery row (= its index in split.json's train list)"""
    class_index: int
    file: str
    """its path relative to the data root, as split.json lists it (``tom_hanks/1234.png``)"""
    cosine: float
    """cosine similarity of its embedding to the face's, in [-1, 1]"""


@dataclass(frozen=True)
class Evidence:
    """The training faces behind a face's nearest-face cosine."""

    nearest: NearFace
    """the nearest of all: its cosine is the score's ``nearest_training_face_cosine`` part"""
    per_class: list[tuple[int, list[NearFace]]]
    """(class index, its nearest faces, most similar first), the class with the most similar
    face first (ties: class order)"""


@dataclass(frozen=True)
class TrainingFaces:
    """split.json's train list, row for row with the gallery, and where its images are.

    ``images`` is the folder thumbnails are read from, None when none is available;
    ``images_note`` says why not and how to configure one (empty when available)."""

    files: tuple[str, ...]
    labels: np.ndarray
    """``(N,)`` int64 class index of each row"""
    root: str
    """the data root split.json records (relative to where training ran)"""
    images: Path | None = None
    images_note: str = ""
    _rows: dict[tuple[int, str], int] = field(default_factory=dict, repr=False)

    def row(self, class_index: int, name: str) -> int | None:
        """The gallery row of file ``name`` (the file name only) of class ``class_index``; None
        for a file the train list does not hold."""
        return self._rows.get((class_index, name))

    @staticmethod
    def name_of(file: str) -> str:
        """A listed file's name (its last path part): what ``GET /evidence`` looks it up by."""
        return PurePosixPath(file).name

    def evidence(self, similarities: np.ndarray, per_class: int = FACES_PER_CLASS) -> Evidence:
        """The nearest faces per class for a face's ``(N,)`` cosines to the gallery's rows.
        Equal cosines keep the train list's order, so the same face gives the same answer."""
        order = np.argsort(-similarities, kind="stable")
        ranked = self.labels[order]
        groups = []
        for class_index in np.unique(self.labels):
            rows = order[ranked == class_index][:per_class]
            groups.append((int(class_index), [self._face(int(r), similarities) for r in rows]))
        groups.sort(key=lambda group: (-group[1][0].cosine, group[0]))
        return Evidence(self._face(int(order[0]), similarities), groups)

    def thumbnail(self, row: int) -> bytes:
        """The JPEG thumbnail of row ``row``'s image (at most ``THUMBNAIL_SIDE`` pixels on its
        long side). ``LookupError`` when no folder is available; ``OSError`` when the file is
        absent or unreadable there."""
        if self.images is None:
            raise LookupError(self.images_note)
        try:
            with Image.open(self.images / self.files[row]) as image:
                image.draft(None, (THUMBNAIL_SIDE, THUMBNAIL_SIDE))  # JPEG: decode at a fraction
                small = image.convert("RGB")
        except Image.DecompressionBombError as exc:  # not an OSError, yet just as unreadable
            raise OSError(str(exc)) from exc
        small.thumbnail((THUMBNAIL_SIDE, THUMBNAIL_SIDE), Image.Resampling.LANCZOS)
        out = io.BytesIO()
        small.save(out, "JPEG", quality=THUMBNAIL_QUALITY)
        return out.getvalue()

    def _face(self, row: int, similarities: np.ndarray) -> NearFace:
        return NearFace(row, int(self.labels[row]), self.files[row], float(similarities[row]))


def gallery_similarities(embedding: np.ndarray, gallery: np.ndarray) -> np.ndarray:
    """``(N,)`` cosine of a ``(D,)`` embedding to each unit row of the ``(N, D)`` gallery: the
    one product the score's nearest-face part and the evidence both read."""
    return (normalise(np.asarray(embedding)[None]) @ gallery.T)[0]


def open_set_parts(
    rule: OpenSetRule, logits: np.ndarray, similarities: np.ndarray | None
) -> tuple[float, dict[str, float]]:
    """The open-set score of one face and its parts by name, from its ``(C,)`` logits and its
    gallery ``similarities`` (computed once per face): the same score as ``rule(logits,
    embedding)``, without a second gallery product."""
    names = rule.fusion.components if rule.fusion is not None else (rule.score,)
    batch = np.asarray(logits)[None]
    parts: dict[str, float] = {}
    for name in names:
        if name == NEAREST_FACE:
            if similarities is None:
                raise ValueError(f"{NEAREST_FACE} needs the gallery similarities")
            parts[name] = float(np.float64(similarities.max()))
        else:
            parts[name] = float(component_scores([name], batch, None, None)[0, 0])
    if rule.fusion is None:
        return parts[rule.score], parts
    fused = rule.fusion.from_parts(np.array([[parts[name] for name in names]]))
    return float(fused[0]), parts


def load_training_faces(
    bundle_dir: Path, meta: BundleMeta, gallery: np.ndarray | None, images_setting: str | None
) -> TrainingFaces | None:
    """The gallery's training faces from ``bundle_dir``/split.json (its sha256 already checked
    with the bundle's files), or None when there is no gallery, or no split.json (a warning:
    answers then carry no evidence). A train list that does not match the gallery row for row
    is a ``BundleError``. ``images_setting``: the ``evidence_dir`` setting."""
    if gallery is None:
        return None
    path = bundle_dir / SPLIT_FILE
    if not path.is_file():
        log.warning(
            "the bundle has an open-set gallery but no %s: answers name no training faces",
            SPLIT_FILE,
        )
        return None
    try:
        split = json.loads(path.read_text(encoding="utf-8"))
        train = split["splits"]["train"]
        root = str(split.get("root", ""))
    except (OSError, ValueError, KeyError, TypeError, AttributeError) as exc:
        raise BundleError(f"{SPLIT_FILE} has no readable splits.train list ({exc!r})") from exc
    if not isinstance(train, list) or len(train) != len(gallery):
        count = len(train) if isinstance(train, list) else "no"
        raise BundleError(
            f"{SPLIT_FILE} lists {count} training files but the open-set gallery "
            f"{meta.open_set.gallery if meta.open_set else ''} has {len(gallery)} rows; row i "
            "of the gallery is the i-th training file, so the two must match (re-export the "
            "bundle)"
        )
    files, labels, rows = _checked_entries(train, len(meta.classes))
    images, note = images_folder(images_setting, root)
    if images is None:
        log.info("training-face thumbnails (GET /evidence) off: %s", note)
    else:
        log.info("training-face thumbnails (GET /evidence) from %s", images)
    return TrainingFaces(files, labels, root, images, note, rows)


def _checked_entries(
    train: list, classes: int
) -> tuple[tuple[str, ...], np.ndarray, dict[tuple[int, str], int]]:
    """The train list's files, class indices and lookup table; ``BundleError`` for an entry
    that is not ``[relative path, class index]`` within the data root, or a name listed twice
    in one class."""
    files: list[str] = []
    labels: list[int] = []
    rows: dict[tuple[int, str], int] = {}
    for i, entry in enumerate(train):
        ok = isinstance(entry, list) and len(entry) == 2
        file, label = entry if ok else ("", -1)
        parts = PurePosixPath(file).parts if isinstance(file, str) else ()
        if not (
            parts
            and not PurePosixPath(file).is_absolute()
            and ".." not in parts
            and "\\" not in file
            and isinstance(label, int)
            and 0 <= label < classes
        ):
            raise BundleError(
                f"{SPLIT_FILE} splits.train[{i}] is not [a path within the data root, a class "
                f"index below {classes}]"
            )
        key = (label, TrainingFaces.name_of(file))
        if key in rows:
            raise BundleError(
                f"{SPLIT_FILE} lists {key[1]!r} twice in class {label} (rows {rows[key]} and {i})"
            )
        rows[key] = i
        files.append(file)
        labels.append(label)
    return tuple(files), np.asarray(labels, dtype=np.int64), rows


def images_folder(setting: str | None, recorded_root: str) -> tuple[Path | None, str]:
    """Where thumbnails are read from, or None and why not (with how to configure it).

    ``setting`` None: split.json's ``recorded_root`` relative to the working directory, where
    that folder exists; ``""``: off; else that folder, which must exist."""
    how = f"set {SETTING} to the folder of the training images (<class_id>/<file>)"
    if setting == "":
        return None, f"training-face thumbnails are turned off ({SETTING} is empty); {how}"
    if setting is None:
        if not recorded_root:
            return None, f"the bundle records no data root; {how}"
        folder = Path(recorded_root)
        if not folder.is_dir():
            return None, (
                f"the training images are not at the data root the bundle records "
                f"({recorded_root}, relative to the working directory); {how}"
            )
        return folder.resolve(), ""
    folder = Path(setting)
    if not folder.is_dir():
        log.warning("%s=%s is not a folder: thumbnails off", SETTING, setting)
        return None, f"{SETTING} names no folder on the server; {how}"
    return folder.resolve(), ""
