"""The Open Inference Protocol's ("v2") JSON objects, as ``service.api.v2`` reads and answers
them: server and model metadata, health, inference requests and responses, errors.

Field names, types and optionality are the protocol's (KServe's "V2 Inference Protocol",
Triton's and MLServer's HTTP/REST API); ``parameters`` hold strings, numbers and booleans only.
Tensor ``data`` is kept as the client sent it (a flat or nested list); ``service.api.v2_tensors``
turns it into arrays, checked against ``shape`` and ``datatype``.
"""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, Field, StrictBool, StrictFloat, StrictInt, StrictStr

ParameterValue = StrictBool | StrictInt | StrictFloat | StrictStr
Parameters = dict[str, ParameterValue]


class MetadataTensor(BaseModel):
    name: str
    datatype: str = Field(description="FP32, BYTES, BOOL, ...")
    shape: list[int] = Field(description="-1: any size along that axis")
    parameters: Parameters | None = None


class ServerMetadata(BaseModel):
    """``GET /v2``."""

    name: str
    version: str
    extensions: list[str] = Field(
        description="the protocol extensions served: binary_data (the binary tensor data "
        "extension) and explain (this service's explanation extension, docs/v2.md)"
    )


class ModelMetadata(BaseModel):
    """``GET /v2/models/{name}``: the inputs a request may send (exactly one of them) and the
    outputs an answer holds; ``parameters`` name the classes in the order of ``probabilities``'
    last axis."""

    name: str
    versions: list[str]
    platform: str
    inputs: list[MetadataTensor]
    outputs: list[MetadataTensor]
    parameters: Parameters | None = None


class ServerLive(BaseModel):
    live: bool


class ServerReady(BaseModel):
    ready: bool


class ModelReady(BaseModel):
    name: str
    ready: bool


class RequestInput(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: str
    shape: list[int]
    datatype: str
    parameters: Parameters | None = None
    data: Any = Field(
        None,
        description="the tensor's elements, flat or nested in row-major order; absent when "
        "parameters.binary_data_size says they follow the JSON (binary data extension)",
    )


class RequestOutput(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: str
    parameters: Parameters | None = None


class InferenceRequest(BaseModel):
    """``POST /v2/models/{name}/infer`` (and ``/explain``): one input, its request-level
    ``parameters`` those of docs/v2.md (``detect``, ``face``; an explanation's ``method`` and
    its own), the outputs to answer (default: all)."""

    model_config = ConfigDict(extra="forbid")

    id: str | None = None
    model_name: str | None = Field(
        None, description="KServe's clients repeat the path's model here; the path decides"
    )
    model_version: str | None = Field(None, description="likewise; the path decides")
    parameters: Parameters | None = None
    inputs: list[RequestInput] = Field(min_length=1)
    outputs: list[RequestOutput] | None = None


class ResponseOutput(BaseModel):
    name: str
    shape: list[int]
    datatype: str
    parameters: Parameters | None = None
    data: list[Any] | None = Field(
        None, description="flat, row-major; absent when binary (parameters.binary_data_size)"
    )


class InferenceResponse(BaseModel):
    model_name: str
    model_version: str | None = None
    id: str | None = None
    parameters: Parameters | None = None
    outputs: list[ResponseOutput]


class InferenceError(BaseModel):
    """Every error of the ``/v2`` routes: ``"<code>: <message>"``, the code as in
    docs/api.md's table, the status as the rest of the API answers it."""

    error: str
