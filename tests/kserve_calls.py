"""KServe's ``InferenceRESTClient`` on the service, in a process of its own.

kserve 0.21 requires ``protobuf<7`` and ``psutil<6`` (older than this environment's, which Ray
uses) and the Kubernetes client, so it is not in the dev extra: tests/kserve-client.txt lists it,
and .ci/run installs it with ``--no-deps`` into ``.kserve-client/``. Its client runs with this
environment's versions all the same, but only with that folder on ``PYTHONPATH``, which would
shadow Ray's packages in the test session: so the tests run the client here, in a child process
(``kserve_calls``), and compare what it prints (JSON) with the service's own answers. Where
kserve is found neither in ``.kserve-client/`` nor in the environment, they are skipped.

    python -m tests.kserve_calls --photo P --api-key K (--url U | --bundle B) [--method M]

``--url``: a running service; ``--bundle``: the app of the API tests' settings on that bundle,
in this process (its lifespan run here, requests through httpx's ASGI transport).
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest

from tests.conftest import ROOT
from tests.v2_wire import image_request

KSERVE_DIR = ROOT / ".kserve-client"
MODEL = "celebs8"
TIMEOUT_S = 300.0


def kserve_calls(*args: str) -> dict[str, Any]:
    """What ``python -m tests.kserve_calls *args`` prints, run with ``.kserve-client/`` on its
    ``PYTHONPATH``; the test is skipped where kserve is not installed there or here."""
    if not (KSERVE_DIR / "kserve").is_dir() and importlib.util.find_spec("kserve") is None:
        pytest.skip(
            "kserve is not installed (its pins conflict with this environment's): "
            f"pip install --no-deps --target {KSERVE_DIR.name} -r tests/kserve-client.txt"
        )
    paths = [str(KSERVE_DIR), str(ROOT), os.environ.get("PYTHONPATH", "")]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(p for p in paths if p)}
    done = subprocess.run(
        [sys.executable, "-m", "tests.kserve_calls", *args],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=TIMEOUT_S,
    )
    assert done.returncode == 0, f"kserve client failed:\n{done.stderr[-3000:]}"
    return json.loads(done.stdout.splitlines()[-1])


async def drive(url: str, transport: Any, photo: bytes, key: dict[str, str], method: str) -> dict:
    """Every call of the client: health, infer with the photo's bytes (binary and base64 JSON)
    and with a blank model input tensor, and ``method``'s explanation by the v1 protocol (the v2
    one refuses to explain). Outputs as lists, by name."""
    import kserve  # here only: the child process has it on its path

    v2 = kserve.InferenceRESTClient(kserve.RESTConfig(transport=transport, protocol="v2"))
    v1 = kserve.InferenceRESTClient(kserve.RESTConfig(transport=transport, protocol="v1"))
    found: dict[str, Any] = {
        "health": [
            await v2.is_server_live(url, headers=key),
            await v2.is_server_ready(url, headers=key),
            await v2.is_model_ready(url, MODEL, headers=key),
        ]
    }
    async with httpx.AsyncClient(transport=transport, timeout=TIMEOUT_S) as client:
        metadata = await client.get(f"{url}/v2/models/{MODEL}", headers=key)
    found["classes"] = metadata.json()["parameters"]["classes"].split(",")
    for name, data, binary in (
        ("binary", photo, True),
        ("json", base64.b64encode(photo), False),
    ):
        image = kserve.InferInput("image", [1], "BYTES")
        image.set_data_from_numpy(np.array([data], dtype=np.object_), binary_data=binary)
        request = kserve.InferRequest(model_name=MODEL, infer_inputs=[image])
        answer = await v2.infer(url, request, model_name=MODEL, headers=dict(key))
        found[name] = {o.name: o.as_numpy().tolist() for o in answer.outputs}
    x = np.zeros((1, 3, 150, 150), dtype=np.float32)
    tensor = kserve.InferInput("input", list(x.shape), "FP32")
    tensor.set_data_from_numpy(x, binary_data=True)
    request = kserve.InferRequest(
        model_name=MODEL, infer_inputs=[tensor], parameters={"binary_data_output": True}
    )
    answer = await v2.infer(url, request, model_name=MODEL, headers=dict(key))
    found["tensor"] = {o.name: o.as_numpy().tolist() for o in answer.outputs}
    body = image_request(photo, parameters={"method": method})
    explained = await v1.explain(url, MODEL, body, headers=key)
    found["heatmap"] = next(o for o in explained["outputs"] if o["name"] == "heatmap")
    try:
        await v2.explain(url, MODEL, body, headers=key)
        found["v2_explain_refused"] = False
    except kserve.errors.UnsupportedProtocol:
        found["v2_explain_refused"] = True
    return found


async def on_app(bundle: Path, photo: bytes, key: str, method: str) -> dict:
    """``drive`` on the API tests' app (tests/api/conftest.py's settings) in this process."""
    from service.app import create_app
    from tests.api.conftest import _settings

    app = create_app(_settings(bundle, api_key=key))
    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=app)
        return await drive("http://testserver", transport, photo, {"X-API-Key": key}, method)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--photo", type=Path, required=True)
    parser.add_argument("--api-key", required=True)
    parser.add_argument("--method", default="gradient")
    where = parser.add_mutually_exclusive_group(required=True)
    where.add_argument("--url")
    where.add_argument("--bundle", type=Path)
    args = parser.parse_args()
    photo = args.photo.read_bytes()
    if args.url:
        key = {"X-API-Key": args.api_key}
        found = asyncio.run(drive(args.url, None, photo, key, args.method))
    else:
        found = asyncio.run(on_app(args.bundle, photo, args.api_key, args.method))
    print(json.dumps(found))


if __name__ == "__main__":
    main()
