"""The README's curl examples name real photos, and /predict answers them as the README implies."""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_readme_example_photos_are_classified_as_their_folder(post_image, data_root):
    examples = re.findall(
        r"curl -F file=@\.\./shared/data/celebs8/([a-z_]+)/([\w.]+) localhost:8000/predict",
        (ROOT / "README.md").read_text(),
    )
    assert examples, "the README shows no /predict example on a celebs8 photo"
    for class_id, name in examples:
        response = post_image((data_root / "celebs8" / class_id / name).read_bytes(), filename=name)
        assert response.status_code == 200, response.text
        assert response.json()["label"] == class_id
        assert response.json()["open_set"]["known"]
