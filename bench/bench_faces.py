"""Faces in photos: detection, accuracy through the full photo path, strangers, latency.

One run prints, for the bundle (default models/celebs8):
1. detection rate on ``wild_others`` (photos of strangers, face near the centre) and on the
   celebs8 test-split crops;
2. accuracy on the test split through the photo path (detect, align, classify), counting a crop
   without a detected face as wrong, next to the accuracy on the crops as they are;
3. the open-set decision as calibrated in meta.json: AUROC and operating point on held-out
   strangers, and how many wild photos it calls strangers;
4. the latency detection and alignment add per request (median and p95, one thread).

    python bench/bench_faces.py [--bundle models/celebs8] [--data ../shared/data]
"""

from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path

import numpy as np
from PIL import Image

from service.bundle import ONNX_FILE, read_meta
from service.common.softmax import softmax
from service.engine import create_session
from service.faces import FaceFinder
from service.preprocess import Preprocessor

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_DATA = Path(os.environ.get("CELEBXAI_DATA", ROOT.parent / "shared" / "data"))


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

    def probabilities(image: Image.Image) -> np.ndarray:
        return softmax(session.run(["logits"], {"input": preprocess(image)[None]})[0])[0]

    wild = sorted((args.data / "wild_others").glob("*.jpg"))
    detect_s, wild_found, wild_unknown = [], 0, 0
    for path in wild:
        image = Image.open(path).convert("RGB")
        started = time.perf_counter()
        faces = finder.detect(image)
        aligned = finder.align(image, faces[0]) if faces else None
        detect_s.append(time.perf_counter() - started)
        if aligned is not None:
            wild_found += 1
            wild_unknown += probabilities(aligned.crop).max() < meta.open_set.threshold

    split = json.loads((args.bundle / "split.json").read_text())["splits"]["test"]
    root = args.data / "celebs8"
    crops_found = photo_correct = crop_correct = 0
    for relative, label in split:
        image = Image.open(root / relative).convert("RGB")
        started = time.perf_counter()
        faces = finder.detect(image)
        aligned = finder.align(image, faces[0]) if faces else None
        detect_s.append(time.perf_counter() - started)
        crop_correct += probabilities(image).argmax() == label
        if aligned is not None:
            crops_found += 1
            photo_correct += probabilities(aligned.crop).argmax() == label

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
    held_out = meta.open_set.model_extra["held_out"]
    print(
        f"open set ({meta.open_set.score} >= {meta.open_set.threshold:.3f}), held-out strangers "
        f"{held_out['unknown_identities']} vs test split: AUROC {held_out['auroc']:.4f}, "
        f"false rejections {held_out['false_rejection_rate']:.3f}, "
        f"false acceptances {held_out['false_acceptance_rate']:.3f}"
    )
    print(f"wild_others called strangers:        {wild_unknown}/{wild_found}")
    ms = np.array(detect_s) * 1000
    print(
        f"detection + alignment per image:     median {np.median(ms):.1f} ms, "
        f"p95 {np.percentile(ms, 95):.1f} ms "
        f"(one thread, {len(ms)} images of 112x112 and 250x250)"
    )


if __name__ == "__main__":
    main()
