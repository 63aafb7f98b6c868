"""Tensors on the Open Inference Protocol's wire: a request's inputs read, an answer's outputs
written, as JSON or with the binary tensor data extension.

A request is JSON, or (binary data extension) JSON of ``Inference-Header-Content-Length``
bytes followed by the inputs' raw data, in input order, each of its ``binary_data_size``
parameter's length. Raw data is little-endian and row-major; a ``BYTES`` element is its length
(4 bytes, little-endian) then its bytes. In JSON, a ``BYTES`` element that holds binary data (an
image file) is base64, as JSON strings cannot carry raw bytes. An answer's output is binary when
its request output says ``binary_data: true`` or the request's parameters say
``binary_data_output: true``; then the answer is laid out the same way.

What cannot be read is 400 ``malformed_body`` (JSON that does not parse, lengths that do not
fit the body); what reads but breaks the protocol (a datatype, a shape, data that does not fill
it) is 422 ``validation_error``, saying where, as FastAPI says it for the rest of the API.
"""

from __future__ import annotations

import base64
import binascii
import json
import math
import struct
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, NoReturn

import numpy as np
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from pydantic import ValidationError

from service.errors import MalformedBody
from service.http.body_limit import length_of
from service.schemas.v2 import (
    InferenceRequest,
    InferenceResponse,
    Parameters,
    RequestInput,
    RequestOutput,
    ResponseOutput,
)

INFERENCE_HEADER = "Inference-Header-Content-Length"
BINARY_DATA_SIZE = "binary_data_size"
BINARY_DATA = "binary_data"
BINARY_DATA_OUTPUT = "binary_data_output"
OCTET_STREAM = "application/octet-stream"
# The little-endian numpy dtype of each datatype this service reads or writes as numbers.
NUMERIC = {"FP32": np.dtype("<f4"), "BOOL": np.dtype("bool")}
_LENGTH = struct.Struct("<I")


@dataclass(frozen=True)
class Tensor:
    """One input as read: ``values`` is a float32 array of ``shape`` (``FP32``) or the flat list
    of its elements' bytes (``BYTES``)."""

    name: str
    datatype: str
    shape: tuple[int, ...]
    values: np.ndarray | list[bytes]
    where: tuple[str | int, ...]
    """its place in the request, for errors: ("body", "inputs", 0)"""


@dataclass(frozen=True)
class Output:
    """One output to answer: ``values`` an array (``FP32``, ``BOOL``) or a list of bytes
    (``BYTES``) of ``shape``'s size, flat or not."""

    name: str
    datatype: str
    shape: tuple[int, ...]
    values: np.ndarray | Sequence[bytes]
    parameters: Parameters = field(default_factory=dict)


def invalid(where: Sequence[str | int], message: str) -> NoReturn:
    """422 ``validation_error`` at ``where`` (as FastAPI reports a field)."""
    raise RequestValidationError([{"loc": tuple(where), "msg": message, "type": "value_error"}])


def read_request(body: bytes, header_length: str | None) -> tuple[InferenceRequest, list[Tensor]]:
    """The request in ``body`` and its inputs as tensors; ``header_length``: the
    ``Inference-Header-Content-Length`` header, None without one (all JSON)."""
    json_part, binary = _split(body, header_length)
    try:
        document = json.loads(json_part)
    except (UnicodeDecodeError, ValueError) as exc:
        raise MalformedBody(f"the request's JSON does not parse: {exc}") from exc
    except RecursionError as exc:  # arrays nested deeper than the parser goes
        raise MalformedBody("the request's JSON is nested too deeply to parse") from exc
    try:
        request = InferenceRequest.model_validate(document)
    except ValidationError as exc:
        errors = [{**error, "loc": ("body", *error["loc"])} for error in exc.errors()]
        raise RequestValidationError(errors) from exc
    blobs = _binary_blobs(request.inputs, binary, header_length is not None)
    tensors = [
        _tensor(item, blob, ("body", "inputs", index))
        for index, (item, blob) in enumerate(zip(request.inputs, blobs, strict=True))
    ]
    return request, tensors


def _split(body: bytes, header_length: str | None) -> tuple[bytes, bytes]:
    if header_length is None:
        return body, b""
    length = length_of(header_length)
    if length is None or not 0 < length <= len(body):
        raise MalformedBody(
            f"{INFERENCE_HEADER}: {header_length!r} is not a length within the body's "
            f"{len(body)} bytes"
        )
    return body[:length], body[length:]


def _binary_blobs(
    inputs: Sequence[RequestInput], binary: bytes, has_header: bool
) -> list[bytes | None]:
    """Each input's raw data (None: its data is in the JSON), cut from ``binary`` in input
    order by their ``binary_data_size``; 400 when the sizes do not add up to it."""
    blobs: list[bytes | None] = []
    offset = 0
    for index, item in enumerate(inputs):
        size = (item.parameters or {}).get(BINARY_DATA_SIZE)
        if size is None:
            blobs.append(None)
            continue
        if not has_header:
            raise MalformedBody(
                f"inputs[{index}] has binary_data_size but the request has no "
                f"{INFERENCE_HEADER} header, so no binary data follows the JSON"
            )
        if isinstance(size, bool) or not isinstance(size, int) or size < 0:
            invalid(("body", "inputs", index, "parameters", BINARY_DATA_SIZE), "not a length")
        if item.data is not None:
            invalid(("body", "inputs", index, "data"), "data and binary_data_size both given")
        if offset + size > len(binary):
            raise MalformedBody(
                f"inputs[{index}]'s binary_data_size {size} runs past the body's "
                f"{len(binary)} bytes of binary data (at offset {offset})"
            )
        blobs.append(binary[offset : offset + size])
        offset += size
    if offset != len(binary):
        raise MalformedBody(
            f"{len(binary) - offset} bytes of binary data after the JSON belong to no input "
            "(the inputs' binary_data_size add up to less)"
        )
    return blobs


def _tensor(item: RequestInput, blob: bytes | None, where: tuple[str | int, ...]) -> Tensor:
    if any(size < 0 for size in item.shape):
        invalid((*where, "shape"), "a shape's sizes are 0 or more")
    count = math.prod(item.shape)
    if item.data is None and blob is None:
        invalid((*where, "data"), "no data (and no binary_data_size)")
    values: np.ndarray | list[bytes]
    if item.datatype == "FP32":
        values = _numbers(item, blob, count, where)
    elif item.datatype == "BYTES":
        values = _elements(item, blob, where)
        if len(values) != count:
            invalid(
                (*where, "data"),
                f"{len(values)} BYTES elements for shape {item.shape} ({count} elements)",
            )
    else:
        invalid(
            (*where, "datatype"),
            f"{item.datatype!r} is not read here: send the image as BYTES or the model input "
            "as FP32",
        )
    return Tensor(item.name, item.datatype, tuple(item.shape), values, where)


def _numbers(
    item: RequestInput, blob: bytes | None, count: int, where: tuple[str | int, ...]
) -> np.ndarray:
    dtype = NUMERIC[item.datatype]
    if blob is not None:
        if len(blob) != count * dtype.itemsize:
            raise MalformedBody(
                f"{item.name}: {len(blob)} bytes of binary data for {count} {item.datatype} "
                f"elements ({count * dtype.itemsize} bytes)"
            )
        flat = np.frombuffer(blob, dtype=dtype)
    else:
        try:
            flat = np.asarray(item.data, dtype=np.float64).ravel()
        except (TypeError, ValueError, OverflowError):
            invalid(
                (*where, "data"),
                f"{item.datatype} data must be numbers within floating-point range, flat or nested",
            )
        if flat.size != count:
            invalid((*where, "data"), f"{flat.size} numbers for shape {item.shape} ({count})")
    try:
        values = flat.astype(np.float32).reshape(item.shape)
    except ValueError:  # no elements, but dimensions numpy cannot make (too many, too large)
        invalid((*where, "shape"), f"{item.shape} is not a shape an array can have")
    if not np.isfinite(values).all():
        invalid((*where, "data"), "holds a value that is not finite (NaN or infinity)")
    return values


def _elements(item: RequestInput, blob: bytes | None, where: tuple[str | int, ...]) -> list[bytes]:
    """A ``BYTES`` tensor's elements: length-prefixed in binary data, base64 strings in JSON."""
    if blob is not None:
        return _unpack_bytes(blob, item.name)
    strings = _flat(item.data)
    if not all(isinstance(value, str) for value in strings):
        invalid((*where, "data"), "BYTES data in JSON must be strings (base64)")
    try:
        return [base64.b64decode(value, validate=True) for value in strings]
    except (binascii.Error, ValueError):
        invalid(
            (*where, "data"),
            "BYTES data in JSON must be base64 (JSON strings cannot hold an image's raw "
            "bytes); or send it as binary data (Inference-Header-Content-Length)",
        )


def _flat(data: Any) -> list[Any]:
    """The elements of ``data`` nested in lists at any depth, in order (without recursion:
    the depth is the client's)."""
    found: list[Any] = []
    stack = [iter([data])]
    while stack:
        for value in stack[-1]:
            if isinstance(value, list):
                stack.append(iter(value))
                break
            found.append(value)
        else:
            stack.pop()
    return found


def _unpack_bytes(blob: bytes, name: str) -> list[bytes]:
    elements = []
    offset = 0
    while offset < len(blob):
        if offset + _LENGTH.size > len(blob):
            raise MalformedBody(f"{name}: a BYTES element's 4-byte length is cut short")
        (length,) = _LENGTH.unpack_from(blob, offset)
        offset += _LENGTH.size
        if offset + length > len(blob):
            raise MalformedBody(
                f"{name}: a BYTES element of {length} bytes runs past its binary data"
            )
        elements.append(blob[offset : offset + length])
        offset += length
    return elements


def _pack_bytes(elements: Sequence[bytes]) -> bytes:
    return b"".join(_LENGTH.pack(len(element)) + element for element in elements)


def answer(
    request: InferenceRequest,
    model_name: str,
    model_version: str,
    outputs: Sequence[Output],
    parameters: Parameters | None = None,
) -> Response:
    """The inference response of ``outputs``: those the request names (all when it names
    none; an unknown name is 422), each binary where the request asks, as JSON or with the
    binary data extension."""
    chosen = _chosen(request.outputs, outputs)
    all_binary = (request.parameters or {}).get(BINARY_DATA_OUTPUT) is True
    described: list[ResponseOutput] = []
    blobs: list[bytes] = []
    for output, asked in chosen:
        own = dict(asked.parameters or {}) if asked is not None else {}
        binary = own.get(BINARY_DATA, all_binary) is True
        params = dict(output.parameters)
        data: list[Any] | None = None
        if binary:
            blob = _raw(output)
            params[BINARY_DATA_SIZE] = len(blob)
            blobs.append(blob)
        else:
            data = _json_data(output)
        described.append(
            ResponseOutput(
                name=output.name,
                shape=list(output.shape),
                datatype=output.datatype,
                parameters=params or None,
                data=data,
            )
        )
    response = InferenceResponse(
        model_name=model_name,
        model_version=model_version,
        id=request.id,
        parameters=parameters or None,
        outputs=described,
    )
    document = response.model_dump(exclude_none=True)
    if not blobs:
        return JSONResponse(document)
    header = json.dumps(document, separators=(",", ":")).encode()
    return Response(
        header + b"".join(blobs),
        media_type=OCTET_STREAM,
        headers={INFERENCE_HEADER: str(len(header))},
    )


def _chosen(
    asked: Sequence[RequestOutput] | None, outputs: Sequence[Output]
) -> list[tuple[Output, RequestOutput | None]]:
    if not asked:
        return [(output, None) for output in outputs]
    by_name = {output.name: output for output in outputs}
    chosen: list[tuple[Output, RequestOutput | None]] = []
    for index, item in enumerate(asked):
        if item.name not in by_name:
            invalid(
                ("body", "outputs", index, "name"),
                f"no output {item.name!r}; outputs: {', '.join(by_name)}",
            )
        chosen.append((by_name[item.name], item))
    return chosen


def _raw(output: Output) -> bytes:
    if output.datatype == "BYTES":
        return _pack_bytes(list(output.values))
    values = np.asarray(output.values, dtype=NUMERIC[output.datatype])
    return values.tobytes(order="C")


def _json_data(output: Output) -> list[Any]:
    if output.datatype == "BYTES":
        return [bytes(element).decode() for element in output.values]
    values = np.asarray(output.values, dtype=NUMERIC[output.datatype]).ravel()
    return list(values.tolist())
