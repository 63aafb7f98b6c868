"""The Open Inference Protocol as a client writes and reads it, written here from the protocol's
text (not from the service's code): requests with images as base64 ``BYTES`` or as binary
tensor data, and answers read back into arrays, JSON or binary alike."""

from __future__ import annotations

import base64
import json
import struct
from typing import Any

import httpx
import numpy as np

HEADER = "Inference-Header-Content-Length"
DTYPES = {"FP32": np.dtype("<f4"), "BOOL": np.dtype("bool")}


def image_request(
    *images: bytes, parameters: dict[str, Any] | None = None, **extra: Any
) -> dict[str, Any]:
    """A JSON request of ``images`` as one ``BYTES`` input of shape [N], base64 each."""
    request: dict[str, Any] = {
        "inputs": [
            {
                "name": "image",
                "datatype": "BYTES",
                "shape": [len(images)],
                "data": [base64.b64encode(image).decode() for image in images],
            }
        ],
        **extra,
    }
    if parameters is not None:
        request["parameters"] = parameters
    return request


def tensor_request(x: np.ndarray, parameters: dict[str, Any] | None = None) -> dict[str, Any]:
    """A JSON request of the model input ``x`` ``(N, 3, H, W)`` as ``FP32``, flat, each number
    written in the fewest digits that read back as the same float32."""
    data = [float(str(value)) for value in np.asarray(x, dtype=np.float32).ravel()]
    request: dict[str, Any] = {
        "inputs": [{"name": "input", "datatype": "FP32", "shape": list(x.shape), "data": data}]
    }
    if parameters is not None:
        request["parameters"] = parameters
    return request


def pack_bytes(elements: list[bytes]) -> bytes:
    """``BYTES`` elements as binary tensor data: a 4-byte little-endian length before each."""
    return b"".join(struct.pack("<I", len(element)) + element for element in elements)


def binary_body(document: dict[str, Any], blobs: list[bytes]) -> tuple[bytes, dict[str, str]]:
    """``document`` (whose binary inputs carry ``binary_data_size`` and no ``data``) followed by
    ``blobs``, and the headers that say where the JSON ends."""
    header = json.dumps(document).encode()
    headers = {HEADER: str(len(header)), "Content-Type": "application/octet-stream"}
    return header + b"".join(blobs), headers


def binary_image_request(
    *images: bytes, parameters: dict[str, Any] | None = None, **extra: Any
) -> tuple[bytes, dict[str, str]]:
    """``images`` as one ``BYTES`` input in binary tensor data."""
    blob = pack_bytes(list(images))
    item = {
        "name": "image",
        "datatype": "BYTES",
        "shape": [len(images)],
        "parameters": {"binary_data_size": len(blob)},
    }
    document: dict[str, Any] = {"inputs": [item], **extra}
    if parameters is not None:
        document["parameters"] = parameters
    return binary_body(document, [blob])


def outputs(response: httpx.Response) -> dict[str, Any]:
    """Every output of an answer by name: an array of its shape (``FP32``, ``BOOL``) or the
    list of its elements (``BYTES``: bytes), from JSON data or binary data alike."""
    assert response.status_code == 200, response.text
    length = response.headers.get(HEADER)
    content = response.content
    document = json.loads(content if length is None else content[: int(length)])
    binary = b"" if length is None else content[int(length) :]
    found: dict[str, Any] = {}
    offset = 0
    for output in document["outputs"]:
        size = (output.get("parameters") or {}).get("binary_data_size")
        if size is None:
            data = output["data"]
            if output["datatype"] == "BYTES":
                found[output["name"]] = [str(value).encode() for value in data]
            else:
                values = np.asarray(data, dtype=DTYPES[output["datatype"]])
                found[output["name"]] = values.reshape(output["shape"])
            continue
        blob = binary[offset : offset + size]
        offset += size
        if output["datatype"] == "BYTES":
            found[output["name"]] = unpack_bytes(blob)
        else:
            values = np.frombuffer(blob, dtype=DTYPES[output["datatype"]])
            found[output["name"]] = values.reshape(output["shape"])
    assert offset == len(binary), "binary data left over after the outputs"
    return found


def unpack_bytes(blob: bytes) -> list[bytes]:
    elements, offset = [], 0
    while offset < len(blob):
        (length,) = struct.unpack_from("<I", blob, offset)
        elements.append(blob[offset + 4 : offset + 4 + length])
        offset += 4 + length
    return elements


def error_of(response: httpx.Response) -> str:
    """The code of a protocol error (``{"error": "<code>: <message>"}``)."""
    body = response.json()
    assert set(body) == {"error"} and isinstance(body["error"], str), body
    return str(body["error"]).split(":", 1)[0]
