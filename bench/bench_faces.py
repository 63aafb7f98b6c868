"""Faces in photos: detection, accuracy through the full photo path, strangers, latency.

One run prints, for the bundle (default models/celebs8):
1. detection rate on ``wild_others`` (photos of strangers, face near the centre) and on the
   celebs8 test-split crops;
2. accuracy on the test split through the photo path (detect, align, classify: the service's
   ``choose_face``), counting a crop without a face as wrong, next to the accuracy on the crops
   as they are (``detect=false``: framed as the bundle says);
3. the open-set decision: as calibrated in meta.json, and through the photo path on the test
   split and the held-out strangers' faces (AUROC, false rejections and acceptances at the
   served threshold), and how many wild photos it calls strangers;
4. the latency detection and alignment add per request (median and p95, one thread);
5. every crop of celebs8 and others through the service's ``choose_face``: how many answer
   ``no_face``, how many are taken as face crops (``face_crop``), and the time per crop;
6. the non-face images (tests/nonface_images.py: skimage's photos, the same at a crop's size and
   cut to their centre square, textures), as PNG and as JPEG: how many get a "face" (a 200
   instead of 422 ``no_face``), and the time per image.

    python bench/bench_faces.py [--bundle models/celebs8] [--data ../shared/data]
"""

from __future__ import annotations

import argparse
import io
import json
import os
import sys
import time
from collections import Counter
from pathlib import Path

import numpy as np
from PIL import Image
from sklearn.metrics import roc_auc_score

from service.bundle.checks import load_gallery
from service.bundle.format import ONNX_FILE, read_meta
from service.bundle.framing import Framing
from service.bundle.open_set import open_set_rule
from service.bundle.preprocess import Preprocessor
from service.common.softmax import softmax
from service.errors import NoFace
from service.faces.aligned import AlignedFace
from service.faces.choice import choose_face
from service.faces.finder import FaceFinder
from service.inference.engine import create_session

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_DATA = Path(os.environ.get("CELEBXAI_DATA", ROOT.parent / "shared" / "data"))
sys.path.insert(0, str(ROOT))

from tests.nonface_images import nonface_images  # noqa: E402


def _aligned(finder: FaceFinder, image: Image.Image, framing: Framing | None) -> AlignedFace | None:
    """The face /predict would classify, or None where it answers ``no_face``."""
    try:
        return choose_face(finder, image, detect=True, index=None, framing=framing).aligned
    except NoFace:
        return None


def _timed_choice(finder: FaceFinder, image: Image.Image) -> tuple[str, float]:
    """``choose_face``'s source for ``image`` (``no_face`` when it raises so) and its seconds."""
    started = time.perf_counter()
    try:
        source = choose_face(finder, image, detect=True, index=None).source
    except NoFace:
        source = "no_face"
    return source, time.perf_counter() - started


def _jpeg(image: Image.Image) -> Image.Image:
    buffer = io.BytesIO()
    image.save(buffer, "JPEG", quality=90)
    return Image.open(buffer).convert("RGB")


def _ms(seconds: list[float]) -> str:
    ms = np.array(seconds) * 1000
    return (
        f"median {np.median(ms):.1f} ms, p95 {np.percentile(ms, 95):.1f} ms, max {ms.max():.0f} ms"
    )


def crops_and_nonfaces(finder: FaceFinder, data: Path) -> None:
    """Items 5 and 6: face crops that answer no_face, non-face images that answer a face."""
    crops = sorted(data.glob("celebs8/*/*.png")) + sorted(data.glob("others/*/*.png"))
    sources: Counter[str] = Counter()
    missed, crop_s = [], []
    for path in crops:
        source, seconds = _timed_choice(finder, Image.open(path).convert("RGB"))
        sources[source] += 1
        crop_s.append(seconds)
        if source == "no_face":
            missed.append(str(path.relative_to(data)))
    print(f"crops (celebs8 + others) by face_box.source: {dict(sorted(sources.items()))}")
    print(f"crops answering no_face:             {len(missed)}/{len(crops)} {missed}")
    print(f"face search per crop:                {_ms(crop_s)}")
    faces, nonface_s = [], []
    images = nonface_images()
    for name, make in images.items():
        image = make()
        for encoding, sent in (("png", image), ("jpeg", _jpeg(image))):
            source, seconds = _timed_choice(finder, sent)
            nonface_s.append(seconds)
            if source != "no_face":
                faces.append(f"{name}.{encoding}:{source}")
    print(f"non-face images given a face (200):  {len(faces)}/{2 * len(images)} {faces}")
    print(f"face search per non-face image:      {_ms(nonface_s)}")


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--bundle", type=Path, default=ROOT / "models" / "celebs8")
    parser.add_argument("--data", type=Path, default=DEFAULT_DATA)
    args = parser.parse_args()

    meta = read_meta(args.bundle)
    if meta.face_alignment is None:
        raise SystemExit(f"{args.bundle} has no face_alignment block")
    finder = FaceFinder(meta.face_alignment, workers=1)
    preprocess = Preprocessor(meta.input)
    session = create_session(args.bundle / ONNX_FILE, "cpu", 1)

    rule = open_set_rule(meta, load_gallery(args.bundle, meta), None)
    framing = meta.input.framing
    outputs = [out.name for out in session.get_outputs()]

    def judge(image: Image.Image) -> tuple[np.ndarray, float]:
        """One model run: the class probabilities and the bundle's open-set score, as
        /predict's ``probabilities`` and ``open_set.score``."""
        results = session.run(outputs, {"input": preprocess(image)[None]})
        embedding = results[1][0] if len(results) > 1 else None
        score = np.inf if rule is None else rule(results[0][0], embedding)
        return softmax(results[0])[0], score

    def known(image: Image.Image) -> bool:
        """The bundle's open-set decision, as /predict's ``open_set.known``."""
        return rule is None or judge(image)[1] >= rule.threshold

    wild = sorted((args.data / "wild_others").glob("*.jpg"))
    detect_s, wild_found, wild_unknown = [], 0, 0
    for path in wild:
        image = Image.open(path).convert("RGB")
        started = time.perf_counter()
        aligned = _aligned(finder, image, framing)
        detect_s.append(time.perf_counter() - started)
        if aligned is not None:
            wild_found += 1
            wild_unknown += not known(aligned.crop)

    split = json.loads((args.bundle / "split.json").read_text())["splits"]["test"]
    root = args.data / "celebs8"
    crops_found = photo_correct = crop_correct = 0
    known_scores: list[float] = []  # test faces through the photo path; no face = rejected
    for relative, label in split:
        image = Image.open(root / relative).convert("RGB")
        started = time.perf_counter()
        aligned = _aligned(finder, image, framing)
        detect_s.append(time.perf_counter() - started)
        as_is = choose_face(None, image, detect=False, index=None, framing=framing).aligned
        crop_correct += judge(as_is.crop)[0].argmax() == label
        if aligned is None:
            known_scores.append(-np.inf)
            continue
        crops_found += 1
        probabilities, score = judge(aligned.crop)
        photo_correct += probabilities.argmax() == label
        known_scores.append(score)
    spec = meta.open_set
    held_out = (spec.model_extra or {}).get("held_out") if spec is not None else None
    stranger_scores = [
        judge(aligned.crop)[1]
        for path in sorted(
            p
            for who in (held_out["unknown_identities"] if held_out else [])
            for p in (args.data / "others" / who).glob("*.png")
        )
        if (aligned := _aligned(finder, Image.open(path).convert("RGB"), framing)) is not None
    ]

    n = len(split)
    print(f"bundle {meta.name} {meta.version}")
    print(
        f"detection rate, wild_others photos:  {wild_found}/{len(wild)} = "
        f"{wild_found / len(wild):.3f}"
    )
    print(f"detection rate, test-split crops:    {crops_found}/{n} = {crops_found / n:.3f}")
    print(f"test accuracy, crops as they are:    {crop_correct / n:.4f}")
    print(
        f"test accuracy, full photo path:      {photo_correct / n:.4f} (undetected count as wrong; "
        f"{photo_correct / max(crops_found, 1):.4f} of detected)"
    )
    if spec is not None and held_out is not None and rule is not None:
        print(
            f"open set ({spec.score} >= {rule.threshold:.3f}), held-out strangers "
            f"{held_out['unknown_identities']} vs test split, as meta.json records them "
            f"(crops as they are): AUROC {held_out['auroc']:.4f}, "
            f"false rejections {held_out['false_rejection_rate']:.3f}, "
            f"false acceptances {held_out['false_acceptance_rate']:.3f}"
        )
        known_a, strangers_a = np.array(known_scores), np.array(stranger_scores)
        labels = np.r_[np.ones(len(known_a)), np.zeros(len(strangers_a))]
        print(
            f"open set through the photo path (detect, align, classify): AUROC "
            f"{roc_auc_score(labels, np.r_[known_a, strangers_a]):.4f}, false rejections "
            f"{(known_a < rule.threshold).mean():.3f} of {len(known_a)} test faces (no face "
            f"counts as rejected), false acceptances {(strangers_a >= rule.threshold).mean():.3f}"
            f" of {len(strangers_a)} held-out strangers' faces found"
        )
    print(f"wild_others called strangers:        {wild_unknown}/{wild_found}")
    ms = np.array(detect_s) * 1000
    print(
        f"detection + alignment per image:     median {np.median(ms):.1f} ms, "
        f"p95 {np.percentile(ms, 95):.1f} ms "
        f"(one thread, {len(ms)} images of 112x112 and 250x250)"
    )
    crops_and_nonfaces(finder, args.data)


if __name__ == "__main__":
    main()
