"""The same API on both hosts: each request goes to ``python -m service`` and to
``python -m service --ray``, and the two answers must have the same status, error code,
content type and body (JSON compared modulo timings and float rounding between processes).

The cases cover every operation of openapi.yaml, the error codes a client meets (400, 401,
404, 413, 415, 422 and 503 overloaded) and the requests the web page makes.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest

from tests.image_bytes import encode, face_png, noise_image
from tests.scaleout.conftest import API_KEY, MAX_UPLOAD_BYTES, RayService, Service
from tests.scaleout.multipart import send_upload

# the single-process and Ray services of the session (tests/scaleout/conftest.py)
pytestmark = pytest.mark.ray

KEY = {"X-API-Key": API_KEY}
TIMEOUT_S = 180.0
# Fields that measure this run, not the answer (the precision probe's timings and the reason
# that quotes their ratio: each process measures its own; the graph it chose is compared).
VOLATILE = re.compile(r"(_ms|_seconds|loaded_at|cached|precision_probe|precision_reason)$")


@dataclass(frozen=True)
class Case:
    method: str
    path: str
    params: dict[str, str] = field(default_factory=dict)
    upload: str | None = None  # a key of ``uploads``
    key: bool = True  # send the API key
    map: str | None = None  # a key of ``uploads``: the map part of POST /explain/evaluate

    @property
    def id(self) -> str:
        query = "&".join(f"{k}={v}" for k, v in self.params.items())
        parts = " ".join(filter(None, (self.upload, self.map)))
        return f"{self.method} {self.path}{'?' + query if query else ''} {parts}"


FACE = "face"
JSON = {"format": "json", "detect": "false"}
COARSE = {"window": "32", "stride": "32"}  # occlusion in a few passes
CASES = [
    # the page and what it loads, the docs
    Case("GET", "/"),
    *[
        Case("GET", f"/static/{name}")
        for name in ("app.js", "api.js", "insight.js", "style.css", "insight.css", "favicon.svg")
    ],
    Case("GET", "/docs"),
    Case("GET", "/openapi.json"),
    # service
    Case("GET", "/healthz"),
    Case("GET", "/readyz"),
    Case("GET", "/model"),
    Case("GET", "/explain"),
    # a training face's thumbnail (/predict's open_set.evidence links it), and a file outside
    # the train split (404 unknown_training_face)
    Case("GET", "/evidence/tom_hanks/9804.png"),
    Case("GET", "/evidence/tom_hanks/9882.png"),
    # work
    Case("POST", "/predict", upload=FACE),
    Case("POST", "/predict", {"detect": "false"}, upload=FACE),
    Case("POST", "/explain/gradcam", JSON, upload=FACE),
    Case("POST", "/explain/gradcam", {"detect": "false"}, upload=FACE),  # image/png
    Case("POST", "/saliency", JSON, upload=FACE),
    Case("POST", "/explain/gradcam", {**JSON, "quality": "true"}, upload=FACE),
    Case("POST", "/explain/evaluate", {"detect": "false"}, upload=FACE, map="map"),
    Case("POST", "/occlusion", {**JSON, "window": "32", "stride": "32"}, upload=FACE),
    Case("POST", "/lime", {**JSON, "num_samples": "64", "seed": "1"}, upload=FACE),
    # contrastive and open-set maps: a perturbation and a gradient method each
    Case("POST", "/occlusion", {**JSON, **COARSE, "contrast": "keanu_reeves"}, upload=FACE),
    Case("POST", "/explain/gradient", {**JSON, "contrast": "keanu_reeves"}, upload=FACE),
    Case("POST", "/explain/occlusion", {**JSON, **COARSE, "target": "open_set"}, upload=FACE),
    Case("POST", "/saliency", {**JSON, "method": "gradcam", "target": "open_set"}, upload=FACE),
    Case(
        "POST",
        "/explain/evaluate",
        {"detect": "false", "contrast": "keanu_reeves"},
        upload=FACE,
        map="map",
    ),
    Case(
        "POST",
        "/explain/evaluate",
        {"detect": "false", "target": "open_set"},
        upload=FACE,
        map="map",
    ),
    # another bundle of models/ (loaded on first use in each process), and an unknown one
    Case("GET", "/model", {"model": "celebs8-scratch"}),
    Case("POST", "/predict", {"model": "celebs8-scratch"}, upload=FACE),
    Case("POST", "/explain/layercam", {**JSON, "model": "celebs8-linear"}, upload=FACE),
    Case("POST", "/predict", {"model": "nobody"}, upload=FACE),  # 404 unknown_model
    Case("GET", "/insight/filters", {"layer": "stem"}),
    Case("POST", "/insight/activations", {"layer": "layer2", "top": "4", **JSON}, upload=FACE),
    Case("GET", "/insight/receptive-field"),
    Case("GET", "/insight/top-patches", {"layer": "layer2", "channel": "3", "format": "json"}),
    Case(
        "GET", "/insight/maximize", {"layer": "layer3", "channel": "5", "steps": "4", "seed": "0"}
    ),
    # errors
    Case("POST", "/predict", upload="empty"),  # 400 empty_file
    Case("POST", "/predict", upload="corrupt"),  # 400 corrupt_image
    Case("POST", "/predict", upload=FACE, key=False),  # 401 missing_api_key
    Case("POST", "/saliency", upload=FACE, key=False),  # 401 before the body is read
    Case("GET", "/model", key=False),  # 401
    Case("POST", "/explain/no-such-method", upload=FACE),  # 404 unknown_method
    Case("POST", "/explain/evaluate", upload=FACE, map="text"),  # 422 bad_map
    Case("GET", "/no-such-page"),  # 404 not_found
    Case("GET", "/predict"),  # 405
    Case("POST", "/predict", upload="too_large"),  # 413 file_too_large
    Case("POST", "/lime", upload="too_large"),  # 413 before an Explain replica sees it
    Case("POST", "/predict", upload="text"),  # 415 unsupported_format
    Case("POST", "/predict", upload="noise"),  # 422 no_face
    Case("POST", "/predict", {"face": "-1"}, upload=FACE),  # 422 validation_error
    Case("POST", "/saliency", {"target": "nobody", **JSON}, upload=FACE),  # 422 unknown_class
    Case("POST", "/occlusion", {"contrast": "nobody", **JSON}, upload=FACE),  # 422 unknown_class
    # 422 unknown_class: the open-set score takes no contrast; a contrast that is the target
    Case("POST", "/explain/gradient", {"target": "open_set", "contrast": "tom_hanks"}, upload=FACE),
    Case("POST", "/lime", {"target": "tom_hanks", "contrast": "tom_hanks"}, upload=FACE),
    Case("GET", "/insight/maximize", {"class": "nobody"}),  # 422 unknown_class
    # jobs: refused before any job is made, or unknown
    Case("POST", "/jobs/no-such-method", upload=FACE),  # 404 unknown_method
    Case("POST", "/jobs/lime", {"num_samples": "5"}, upload=FACE),  # 422 validation_error
    Case("POST", "/jobs/lime", upload="text"),  # 415 in the Explain replica
    Case("POST", "/jobs/maximize", {"class": "nobody"}),  # 422 unknown_class
    Case("POST", "/jobs/occlusion", {"contrast": "nobody"}, upload=FACE),  # 422 unknown_class
    Case("POST", "/jobs/lime", upload=FACE, key=False),  # 401 before the body is read
    Case("GET", "/jobs/no-such-job"),  # 404 unknown_job, from the job board
    Case("GET", "/jobs/no-such-job/result"),
    Case("GET", "/jobs/no-such-job/events"),
    Case("DELETE", "/jobs/no-such-job"),
]


@pytest.fixture(scope="module")
def uploads(celebs_root: Path) -> dict[str, tuple[str, bytes, str]]:
    """(file name, bytes, content type) of each kind of upload."""
    face = face_png(celebs_root, "tom_hanks")
    rows, cols = np.mgrid[0:150, 0:150]
    bump = np.round(np.exp(-(((rows - 75) / 30.0) ** 2 + ((cols - 75) / 25.0) ** 2)), 4)
    return {
        FACE: ("face.png", face, "image/png"),
        "empty": ("empty.png", b"", "image/png"),
        "corrupt": ("corrupt.png", face[: len(face) // 3], "image/png"),
        "too_large": ("big.png", b"\0" * (MAX_UPLOAD_BYTES + 100_000), "image/png"),
        "text": ("notes.txt", b"not an image at all, just words\n" * 20, "text/plain"),
        "noise": ("noise.png", encode(noise_image((160, 160)), "PNG"), "image/png"),
        "map": ("map.json", json.dumps(bump.tolist()).encode(), "application/json"),
    }


@pytest.fixture(scope="module")
def hosts(single_service: Service, ray_service: RayService) -> dict[str, Service]:
    return {"single": single_service, "ray": ray_service}


@pytest.fixture(scope="module")
def clients(hosts: dict[str, Service]) -> Iterator[dict[str, httpx.Client]]:
    made = {name: httpx.Client(base_url=s.url, timeout=TIMEOUT_S) for name, s in hosts.items()}
    yield made
    for client in made.values():
        client.close()


def _send(client: httpx.Client, case: Case, uploads: dict) -> httpx.Response:
    files = {"file": uploads[case.upload]} if case.upload else None
    if files is not None and case.map:
        files["map"] = uploads[case.map]
    return client.request(
        case.method, case.path, params=case.params, files=files, headers=KEY if case.key else {}
    )


def _answer(response: httpx.Response) -> dict[str, Any]:
    """What must be the same on both hosts."""
    content_type = response.headers.get("content-type", "")
    answer: dict[str, Any] = {"status": response.status_code, "content_type": content_type}
    if content_type.startswith("application/json"):
        answer["json"] = _stable(response.json())
    elif content_type.startswith("image/"):
        answer["bytes"] = len(response.content) > 0
    else:
        answer["body"] = response.content
    if response.status_code == 503:
        answer["retry_after"] = "retry-after" in response.headers
    return answer


def _stable(value: Any) -> Any:
    """``value`` without the fields that time this run."""
    if isinstance(value, dict):
        return {k: _stable(v) for k, v in value.items() if not VOLATILE.search(k)}
    if isinstance(value, list):
        return [_stable(v) for v in value]
    return value


def _same(left: Any, right: Any, where: str = "") -> list[str]:
    """Where ``left`` and ``right`` differ (floats within 1e-2 relative or 1e-3 absolute: the
    replicas run torch and ONNX Runtime with other thread counts than the single process,
    which changes the order of float sums, and gradient maps amplify it a little)."""
    if isinstance(left, float) or isinstance(right, float):
        ok = isinstance(left, int | float) and isinstance(right, int | float)
        close = ok and math.isclose(left, right, rel_tol=1e-2, abs_tol=1e-3)
        return [] if close else [f"{where}: {left!r} != {right!r}"]
    if isinstance(left, dict) and isinstance(right, dict):
        if left.keys() != right.keys():
            return [f"{where}: keys {sorted(left.keys() ^ right.keys())}"]
        return [d for k in left for d in _same(left[k], right[k], f"{where}.{k}")]
    if isinstance(left, list) and isinstance(right, list):
        if len(left) != len(right):
            return [f"{where}: lengths {len(left)} != {len(right)}"]
        return [
            d
            for i, (a, b) in enumerate(zip(left, right, strict=True))
            for d in _same(a, b, f"{where}[{i}]")
        ]
    return [] if left == right else [f"{where}: {str(left)[:200]!r} != {str(right)[:200]!r}"]


@pytest.mark.parametrize("case", CASES, ids=[case.id for case in CASES])
def test_same_answer_on_both_hosts(case: Case, clients: dict, uploads: dict):
    single = _answer(_send(clients["single"], case, uploads))
    ray = _answer(_send(clients["ray"], case, uploads))

    assert _same(single, ray) == [], f"single: {str(single)[:400]}\nray: {str(ray)[:400]}"


def test_predict_links_thumbnails_each_host_serves(clients: dict, uploads: dict):
    """/predict's evidence links training-face thumbnails on both hosts: the Ray replicas find
    the data root from the working directory as the single process does."""
    for host, client in clients.items():
        answer = client.post("/predict", files={"file": uploads[FACE]}, headers=KEY).json()
        evidence = answer["open_set"]["evidence"]
        assert evidence["thumbnails"], (host, evidence["thumbnails_note"])
        thumbnail = client.get(evidence["nearest"]["thumbnail"], headers=KEY)
        assert thumbnail.status_code == 200, (host, thumbnail.text[:200])
        assert thumbnail.headers["content-type"] == "image/jpeg", host


def test_head_requests_and_metrics_names(clients: dict):
    """``/metrics``: same content type and metric names (values count each host's own
    traffic); HEAD like GET without a body."""
    names = {}
    for host, client in clients.items():
        response = client.get("/metrics")
        assert response.status_code == 200
        assert response.headers["content-type"].startswith("text/plain")
        # a labelled counter's ``_created`` series appears with its first label set, which
        # counts the host's own traffic (a model unloaded by one process's LRU and not by the
        # other host's replicas, each with its own): the families are what must match
        found = set(re.findall(r"^# TYPE (\S+)", response.text, re.M))
        names[host] = {name for name in found if not name.endswith("_created")}
        head = client.head("/")
        assert (head.status_code, head.content) == (200, b"")
    assert names["single"] == names["ray"]
    assert {"celebxai_http_requests_total", "celebxai_ready"} <= names["ray"]


def test_full_explanation_queue_is_503_overloaded_with_retry_after(
    hosts: dict[str, Service], uploads: dict
):
    """2 explanations at once and 2 waiting on both hosts: of 10 slow LIME requests sent at
    once, some are refused at once with 503 ``overloaded`` and ``Retry-After``. Then every
    client hangs up, which stops the work. An admitted request that ends within the 5 s the
    clients wait (a CPU fast enough runs a 1000-sample LIME in less) is a 200, not a refusal:
    every other early answer must be the 503."""
    _, face, _ = uploads[FACE]
    for host, service in hosts.items():
        sockets = [
            send_upload(
                service.url,
                "/lime",
                {"num_samples": 1000, "seed": seed, "detect": "false"},
                face,
                KEY,
            )
            for seed in range(10)
        ]
        with ThreadPoolExecutor(len(sockets)) as pool:
            answers = list(pool.map(_early_answer, sockets))
        for sock in sockets:
            sock.close()
        refused = [a for a in answers if a is not None and a[0] != 200]
        assert refused, f"{host}: no request was refused"
        for status, headers, body in refused:
            assert status == 503, (host, status, body)
            assert "retry-after" in headers, (host, headers)
            assert json.loads(body)["error"]["code"] == "overloaded", (host, body)


def _early_answer(sock: Any, timeout_s: float = 5.0) -> tuple[int, dict, bytes] | None:
    """The answer on ``sock`` if one comes within ``timeout_s`` (a refusal), else None."""
    sock.settimeout(timeout_s)
    data = b""
    try:
        while b"\r\n\r\n" not in data or not _complete(data):
            chunk = sock.recv(65536)
            if not chunk:
                break
            data += chunk
    except TimeoutError:
        return None
    if not data:
        return None
    head, _, body = data.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    headers = dict(line.lower().split(": ", 1) for line in lines[1:] if ": " in line)
    return int(lines[0].split()[1]), headers, body


def _complete(data: bytes) -> bool:
    head, _, body = data.partition(b"\r\n\r\n")
    found = re.search(rb"(?i)content-length: *(\d+)", head)
    return found is not None and len(body) >= int(found.group(1))
