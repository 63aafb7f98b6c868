"""``python -m service.client explain``: a folder of 20 real faces explained through the
session's app, each overlay and the summaries checked against the service's own answers;
retries after ``Retry-After``; refusals recorded, not retried; the API key from the
environment."""

from __future__ import annotations

import csv
import json
from collections.abc import Callable
from pathlib import Path

import httpx
import pytest
from fastapi.testclient import TestClient
from PIL import Image

from service.client.__main__ import main
from service.client.api import Client, ServiceError
from tests.api.conftest import API_KEY

URL = "http://testserver"
FACES = 20


@pytest.fixture(scope="module")
def faces(
    tmp_path_factory: pytest.TempPathFactory, default_bundle: Path, celebs_root: Path
) -> Path:
    """A folder of 20 held-out faces in class subfolders (links to the data, not copies)."""
    split = json.loads((default_bundle / "split.json").read_text())
    folder = tmp_path_factory.mktemp("faces")
    for relative, _ in split["splits"]["test"][:: len(split["splits"]["test"]) // FACES][:FACES]:
        link = folder / relative
        link.parent.mkdir(parents=True, exist_ok=True)
        link.symlink_to(celebs_root / relative)
    return folder


def _rows(out: Path) -> list[dict[str, str]]:
    with (out / "summary.csv").open(encoding="utf-8") as stream:
        return list(csv.DictReader(stream))


def test_explains_a_folder_of_faces(
    client: TestClient,
    post_image: Callable[..., httpx.Response],
    faces: Path,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
):
    out = tmp_path / "out"
    argv = ["explain", str(faces), "--method", "gradcam", "--out", str(out), "--url", URL]
    status = main([*argv, "--api-key", API_KEY, "--param", "quality=true"], http=client)

    assert status == 0
    captured = capsys.readouterr()
    assert f"{FACES}/{FACES}" in captured.err  # the progress bar ran to the end
    assert f"{FACES} of {FACES} photos explained by gradcam" in captured.out
    rows = _rows(out)
    assert len(rows) == FACES
    summary = json.loads((out / "summary.json").read_text())
    assert (summary["explained"], summary["failed"], summary["method"]) == (FACES, 0, "gradcam")
    assert summary["parameters"] == {"quality": "true"}
    for row, recorded in zip(rows, summary["photos"], strict=True):
        photo = Path(row["file"])
        assert row["overlay"] == f"{photo.parent.name}__{photo.stem}.gradcam.png"
        assert recorded["label"] == row["label"]
        with Image.open(out / row["overlay"]) as overlay, Image.open(photo) as original:
            assert (overlay.format, overlay.mode, overlay.size) == ("PNG", "RGB", original.size)
        assert row["quality"] in ("strong", "weak", "unreliable")
        assert row["target"] == row["label"]  # the predicted class is explained
    # every label is /predict's for that photo (a few photos: the rest share the code path)
    for row in rows[:: FACES // 4]:
        predicted = post_image(Path(row["file"]).read_bytes()).json()
        assert row["label"] == predicted["label"]
        assert float(row["probability"]) == pytest.approx(predicted["probability"], abs=1e-5)
    assert sum(row["label"] == Path(row["file"]).parent.name for row in rows) >= FACES - 2


def test_waits_as_retry_after_says_then_succeeds(client: TestClient, faces: Path):
    """The first answer is a 503 with ``Retry-After: 3``: the client waits 3 s and sends the
    request again, to the real app."""
    refused = {"count": 0}

    def transport(request: httpx.Request) -> httpx.Response:
        if refused["count"] == 0:
            refused["count"] += 1
            return httpx.Response(
                503,
                headers={"Retry-After": "3"},
                json={"error": {"code": "overloaded", "message": "busy"}},
            )
        return client.send(request)

    waits: list[float] = []
    http = httpx.Client(transport=httpx.MockTransport(transport))
    photo = next(faces.rglob("*.png")).read_bytes()
    with Client(URL, API_KEY, retries=2, sleep=waits.append, http=http) as api:
        answer = api.explain(photo, "gradient")
        assert answer["method"] == "gradient" and api.retried == 1
    assert waits == [3.0]


def test_refusals_are_recorded_not_retried(
    client: TestClient, faces: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
):
    """A file the service refuses (415) gets its row with the error, the others go on, the
    exit status is 1; the key comes from CELEBXAI_API_KEY."""
    folder = tmp_path / "mixed"
    folder.mkdir()
    (folder / "a_notes.png").write_bytes(b"not an image at all, just words\n" * 20)
    (folder / "b_face.png").symlink_to(next(faces.rglob("*.png")))
    monkeypatch.setenv("CELEBXAI_API_KEY", API_KEY)
    out = tmp_path / "out"
    argv = ["explain", str(folder), "--method", "gradient", "--out", str(out), "--url", URL]

    assert main(argv, http=client) == 1
    rows = _rows(out)
    assert rows[0]["error"].startswith("unsupported_format: ") and rows[0]["overlay"] == ""
    assert rows[1]["error"] == "" and (out / rows[1]["overlay"]).is_file()
    assert json.loads((out / "summary.json").read_text())["retried"] == 0


def test_a_wrong_key_is_the_services_401(client: TestClient, faces: Path):
    photo = next(faces.rglob("*.png")).read_bytes()
    with Client(URL, "wrong", http=client) as api, pytest.raises(ServiceError) as refused:
        api.explain(photo, "gradient")
    assert (refused.value.status, refused.value.code) == (401, "invalid_api_key")
    assert api.retried == 0
