"""Where dlib's five face landmarks sit in the training crops: the template that serving aligns
photos to, so that a face found in any photo is cropped with the same framing as the training
data (see service/faces/finder.py).

The template is measured, not assumed: detect the face in every training crop with dlib's HOG
detector, predict its 5 landmarks (outer and inner corner of each eye, base of the nose) and
average their positions, as fractions of the crop's width and height (so crops of any size
count). Serving warps a photo's face to the most common training-crop size, then preprocesses it
like any upload.

The same pass measures where dlib's own face chip lies in the crops (``dlib_chip_box``: the box
of ``dlib.get_face_chip_details(landmarks, 150, padding=0.25)``, the framing dlib's face network
was trained on), averaged the same way: ``fit --framing dlib-chip`` trains on that box of every
crop (``service.bundle.framing``).
"""

from __future__ import annotations

import logging
from collections import Counter
from pathlib import Path

import numpy as np
from PIL import Image
from tqdm import tqdm

from service.faces.model_files import landmarks_model_path

log = logging.getLogger(__name__)


def landmark_template(root: Path, files: list[str]) -> dict:
    """Mean 5-point landmark positions over the crops ``root/<file>`` that have a detectable face.

    Returns ``{"points": [[x, y] x 5] as fractions of width and height, "width", "height" (the
    most common crop size), "images", "detected", "dlib_chip_box": [left, top, right, bottom]
    (fractions; dlib's chip may reach past the crop)}``.
    """
    import dlib

    detector = dlib.get_frontal_face_detector()
    predictor = dlib.shape_predictor(str(landmarks_model_path()))
    points, sizes, chips = [], [], []
    for rel in tqdm(files, desc="landmark template", leave=False):
        image = np.asarray(Image.open(root / rel).convert("RGB"))
        height, width = image.shape[:2]
        sizes.append((width, height))
        boxes = detector(image, 0)
        if len(boxes) == 0:
            continue
        box = max(boxes, key=lambda b: b.area())
        shape = predictor(image, box)
        points.append(
            [[shape.part(i).x / width, shape.part(i).y / height] for i in range(shape.num_parts)]
        )
        chip = dlib.get_face_chip_details(shape, size=150, padding=0.25).rect
        chips.append(
            [chip.left() / width, chip.top() / height, chip.right() / width, chip.bottom() / height]
        )
    if not points:
        raise ValueError("no face was detected in any training crop")
    width, height = Counter(sizes).most_common(1)[0][0]
    log.info("landmark template from %d of %d crops", len(points), len(files))
    return {
        "points": np.mean(points, axis=0).round(5).tolist(),
        "width": width,
        "height": height,
        "images": len(files),
        "detected": len(points),
        "dlib_chip_box": np.mean(chips, axis=0).round(4).tolist(),
    }
