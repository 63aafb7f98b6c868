"""The README's curl examples name real photos, and the service answers them as the README
implies: /predict names the photo's own class and calls it known, and every other example on a
celebs8 photo is answered."""

from __future__ import annotations

import re
import shlex
from pathlib import Path
from urllib.parse import parse_qsl, urlsplit

ROOT = Path(__file__).resolve().parents[2]
README = (ROOT / "README.md").read_text()
CELEBS8_UPLOAD = re.compile(
    r"^curl -F file=@\.\./shared/data/celebs8/([a-z_]+)/([\w.]+) (.+)$", re.M
)


def _examples() -> list[tuple[str, str, list[str]]]:
    """(class id, file name, the rest of the command split as a shell would) per example."""
    return [(m[1], m[2], shlex.split(m[3], comments=True)) for m in CELEBS8_UPLOAD.finditer(README)]


def test_readme_example_photos_are_classified_as_their_folder(post_image, data_root):
    examples = [(c, name) for c, name, rest in _examples() if rest == ["localhost:8000/predict"]]
    assert examples, "the README shows no /predict example on a celebs8 photo"
    for class_id, name in examples:
        response = post_image((data_root / "celebs8" / class_id / name).read_bytes(), filename=name)
        assert response.status_code == 200, response.text
        assert response.json()["label"] == class_id
        assert response.json()["open_set"]["known"]


def test_every_readme_example_on_a_photo_is_answered(client, data_root):
    examples = _examples()
    assert len(examples) >= 2, "the README shows no explanation example on a celebs8 photo"
    for class_id, name, rest in examples:
        url = urlsplit("http://" + rest[0])
        assert url.netloc == "localhost:8000", rest
        photo = (data_root / "celebs8" / class_id / name).read_bytes()
        response = client.post(
            url.path, params=parse_qsl(url.query), files={"file": (name, photo, "image/png")}
        )
        assert response.status_code == 200, (rest, response.text[:300])
        if dict(parse_qsl(url.query)).get("format") in ("png", "overlay"):
            assert response.headers["content-type"] == "image/png"
