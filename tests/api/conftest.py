"""One service app for the whole API test session, on the real default bundle.

The app runs with an API key, small limits (cheap oversized inputs) and two threads; the
``client`` sends the key by default.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from fastapi.testclient import TestClient
from httpx import Response

from service.app import create_app
from service.inference.model import ServingModel
from service.settings import Settings
from tests.bundle_copies import bundle_copy

API_KEY = "test-key"
MAX_UPLOAD_BYTES = 1_000_000
MAX_IMAGE_PIXELS = 4_000_000
WEB_ORIGIN = "http://localhost:5173"


def _settings(bundle: Path, **overrides: object) -> Settings:
    values: dict[str, object] = {
        "model": bundle,
        "threads": 2,
        "max_batch_size": 8,
        "batch_timeout_ms": 10,
        "max_upload_bytes": MAX_UPLOAD_BYTES,
        "max_image_pixels": MAX_IMAGE_PIXELS,
        "api_key": API_KEY,
        "cors_origins": [WEB_ORIGIN],
        "access_log": False,
    }
    values.update(overrides)
    return Settings(_env_file=None, **values)


@pytest.fixture(scope="session")
def make_settings(default_bundle: Path) -> Callable[..., Settings]:
    """``make_settings(**overrides)``: the API tests' settings with some fields changed."""
    return lambda **overrides: _settings(default_bundle, **overrides)


@pytest.fixture(scope="session")
def client(make_settings: Callable[..., Settings]) -> Iterator[TestClient]:
    """A client of the session's app, after its lifespan loaded the model."""
    app = create_app(make_settings())
    with TestClient(app, headers={"X-API-Key": API_KEY}) as client:
        yield client


@pytest.fixture()
def cold_client(make_settings: Callable[..., Settings]) -> Iterator[TestClient]:
    """A client of an app of its own, its caches empty: for a test that counts what a first
    request adds to them (the session's app has served every earlier test, whose photos may
    already fill its caches)."""
    with TestClient(create_app(make_settings()), headers={"X-API-Key": API_KEY}) as client:
        yield client


@pytest.fixture(scope="session")
def serving_model(client: TestClient) -> ServingModel:
    state = client.app.state.service
    assert state.model is not None, f"test app not ready: {state.reason}"
    return state.model


@pytest.fixture(scope="session")
def held_out_faces(default_bundle: Path, celebs_root: Path) -> list[tuple[Path, str]]:
    """Two test-split photos per class, as (path, class id), from the bundle's split.json."""
    split = json.loads((default_bundle / "split.json").read_text())
    per_class: dict[str, list[Path]] = {}
    for relative, _ in split["splits"]["test"]:
        class_id = relative.split("/")[0]
        per_class.setdefault(class_id, []).append(celebs_root / relative)
    return [(path, class_id) for class_id, paths in sorted(per_class.items()) for path in paths[:2]]


@pytest.fixture(scope="session")
def face_bytes(held_out_faces: list[tuple[Path, str]]) -> bytes:
    """One valid face photo (PNG) to send where any good image will do."""
    return held_out_faces[0][0].read_bytes()


@pytest.fixture(scope="session")
def post_image(client: TestClient) -> Callable[..., Response]:
    """``post_image(data, filename=, content_type=, path=, headers=)``: POST ``data`` as the
    multipart field ``file``."""

    def post(
        data: bytes,
        filename: str = "face.png",
        content_type: str = "image/png",
        path: str = "/predict",
        headers: dict[str, str] | None = None,
    ) -> Response:
        return client.post(path, files={"file": (filename, data, content_type)}, headers=headers)

    return post


# The bundles of ``models_dir``: the default's files under other names, one of them corrupt.
TWIN_MODEL = "celebs8-twin"
CORRUPT_MODEL = "celebs8-corrupt"


@pytest.fixture(scope="session")
def models_dir(tmp_path_factory: pytest.TempPathFactory, default_bundle: Path) -> Path:
    """A ``models_dir`` beside the default bundle: ``TWIN_MODEL`` (valid, the default's
    weights) and ``CORRUPT_MODEL`` (model.onnx's sha256 wrong in its meta.json)."""
    folder = tmp_path_factory.mktemp("models")
    bundle_copy(default_bundle, folder / "twin", TWIN_MODEL)
    bundle_copy(default_bundle, folder / "corrupt", CORRUPT_MODEL, corrupt="model.onnx")
    return folder


@pytest.fixture(scope="session")
def api_settings(client: TestClient) -> Settings:
    """The settings of the session's app."""
    return client.app.state.service.settings
