"""Which face a request classifies: every face found, preferred first, and the one chosen.

``choose_face`` runs the finder (or takes the whole upload: ``detect=false``, or a bundle
without face alignment) and aligns the chosen face; no face is 422 ``no_face``, an index past
the faces found 422 ``face_index_out_of_range``.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Literal

from PIL import Image

from service.bundle.framing import Framing
from service.bundle.preprocess import Box
from service.errors import FaceNotFound, NoFace
from service.faces.aligned import AlignedFace, Face, whole_image
from service.faces.finder import FaceFinder


@dataclass(frozen=True)
class FaceChoice:
    """The region a request classifies and explains: ``aligned`` (the model's view), every face
    found (``faces``, preferred first) and which one was used (``index``; None = whole image)."""

    aligned: AlignedFace
    faces: list[Face]
    index: int | None
    detect_ms: float
    image_size: tuple[int, int] | None = None  # the upload's (width, height), for a whole image

    @property
    def box(self) -> Box:
        face = self.aligned.face
        if face is not None:
            return face.box
        width, height = self.image_size or self.aligned.crop.size
        return Box(0, 0, width, height)

    @property
    def source(self) -> Literal["whole_image", "detector", "face_crop"]:
        """Where ``box`` came from: the detector, the upload taken as a face crop (the detectors
        found no face in it, but the CNN found one filling it), or the whole image (no
        detection)."""
        face = self.aligned.face
        return "whole_image" if self.index is None or face is None else face.source


def choose_face(
    finder: FaceFinder | None,
    image: Image.Image,
    *,
    detect: bool,
    index: int | None,
    framing: Framing | None = None,
) -> FaceChoice:
    """Detect faces and align the chosen one (``index`` into the preferred-first list; default
    the first). ``detect=False``, or a bundle without face alignment, uses the whole image (cut
    to the bundle's ``framing`` box, when it has one).

    Raises ``NoFace`` when detection finds nothing and ``FaceNotFound`` for an index past the
    faces found.
    """
    if finder is None or not detect:
        if index:  # face=0 names the one face the whole image is; any other none
            raise FaceNotFound(
                f"face={index} asked for, but the whole image is used as the face "
                f"({'detect=false' if detect is False else 'this model aligns no faces'}): "
                "leave face out"
            )
        return FaceChoice(whole_image(image, framing), [], None, 0.0, image.size)
    started = time.perf_counter()
    faces = finder.detect(image)
    if not faces:
        raise NoFace(
            "no face found in the image (the detector looks for frontal faces about 40 pixels or "
            "more across); send a larger or more frontal photo, or pass detect=false if the image "
            "already is a tight face crop"
        )
    chosen = 0 if index is None else index
    if chosen >= len(faces):
        raise FaceNotFound(
            f"face={index} asked for, but {len(faces)} face(s) were found "
            f"(indices 0..{len(faces) - 1})"
        )
    aligned = finder.align(image, faces[chosen])
    return FaceChoice(aligned, faces, chosen, (time.perf_counter() - started) * 1000)
