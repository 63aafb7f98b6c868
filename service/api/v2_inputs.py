"""The one input of an Open Inference Protocol request as the service's model inputs.

An image (``BYTES``, one file's bytes an element) goes the way of ``/predict``'s upload: image
intake (``deps.decoded_image``: byte, pixel and format checks, the pixel budget), the face
choice and preprocessing (``deps.image_input``); a model input (``FP32`` ``[N, 3, H, W]``) is
checked against the bundle's input spec and taken as it is. ``detect`` and ``face`` are request
parameters here, as they are query parameters there. ``service.api.v2`` answers from these.
"""

from __future__ import annotations

from typing import Any

import numpy as np
from fastapi import Request
from fastapi.exceptions import RequestValidationError
from PIL import Image
from pydantic import BaseModel, ConfigDict, Field, ValidationError
from starlette.concurrency import run_in_threadpool

from service.api.deps import decoded_image, image_input
from service.api.v2_tensors import (
    BINARY_DATA_OUTPUT,
    INFERENCE_HEADER,
    Tensor,
    invalid,
    read_request,
)
from service.errors import ServiceError
from service.explanations import UploadFacts
from service.faces.aligned import whole_image
from service.faces.choice import FaceChoice
from service.inference.model import ModelInput, ServingModel
from service.schemas.common import ImageInfo
from service.schemas.v2 import InferenceRequest
from service.state import ServiceState

IMAGE_INPUT = "image"
TENSOR_INPUT = "input"  # model.onnx's own input name
# Request parameters of the protocol itself, read by v2_tensors, not by the model.
PROTOCOL_PARAMS = frozenset({BINARY_DATA_OUTPUT})


class FaceParams(BaseModel):
    """The request parameters that choose the face, as ``/predict``'s query parameters."""

    model_config = ConfigDict(strict=True)

    detect: bool = True
    face: int | None = Field(None, ge=0)


async def read_input(request: Request, body: bytes) -> tuple[InferenceRequest, Tensor]:
    """The request and its one input."""
    parsed, tensors = await run_in_threadpool(
        read_request, body, request.headers.get(INFERENCE_HEADER)
    )
    if len(tensors) != 1:
        invalid(
            ("body", "inputs"),
            f"{len(tensors)} inputs; send exactly one: {IMAGE_INPUT} (BYTES) or "
            f"{TENSOR_INPUT} (FP32)",
        )
    return parsed, tensors[0]


def face_params(parameters: dict[str, Any] | None, allowed: set[str]) -> FaceParams:
    """``detect`` and ``face`` from the request's parameters; a name neither these, the
    protocol's nor one of ``allowed`` is 422."""
    given = dict(parameters or {})
    own = set(FaceParams.model_fields)
    unknown = sorted(given.keys() - own - PROTOCOL_PARAMS - allowed)
    if unknown:
        known = sorted(own | PROTOCOL_PARAMS | allowed)
        invalid(
            ("body", "parameters", unknown[0]),
            f"{', '.join(unknown)}: not a parameter here; parameters: {', '.join(known)}",
        )
    try:
        return FaceParams.model_validate({k: v for k, v in given.items() if k in own})
    except ValidationError as exc:
        raise RequestValidationError(
            [{**error, "loc": ("body", "parameters", *error["loc"])} for error in exc.errors()]
        ) from exc


async def model_inputs(
    state: ServiceState,
    model: ServingModel,
    tensor: Tensor,
    choice: FaceParams,
    received_at: float,
    *,
    one: bool,
) -> tuple[list[ModelInput], list[UploadFacts]]:
    """The model input of every element of ``tensor`` (``one``: exactly one element), and what
    the answer says of each one's upload."""
    if tensor.datatype == "BYTES":
        expected = IMAGE_INPUT
        count = len(tensor.values)
    else:
        expected = TENSOR_INPUT
        count = tensor.shape[0] if tensor.shape else 0
    if tensor.name != expected:
        invalid(
            (*tensor.where, "name"),
            f"a {tensor.datatype} input is named {expected!r} (GET /v2/models/{{name}})",
        )
    limit = 1 if one else state.settings.max_batch_size
    if not 1 <= count <= limit:
        invalid(
            (*tensor.where, "shape"),
            f"{count} images; send 1 to {limit} per request"
            if limit > 1
            else f"{count} images; send exactly 1",
        )
    if isinstance(tensor.values, list):
        rows, facts = [], []
        for index, data in enumerate(tensor.values):  # one at a time: each holds its pixels
            try:
                async with decoded_image(state, data, received_at) as image:
                    rows.append(
                        await image_input(model, image, detect=choice.detect, face=choice.face)
                    )
                    facts.append(UploadFacts.of(image))
            except ServiceError as error:
                if count == 1:
                    raise
                # the same error, saying which image
                raise type(error)(
                    f"image {index}: {error.message}", headers=error.headers
                ) from error
        return rows, facts
    return tensor_inputs(model, tensor, tensor.values, received_at)


def tensor_inputs(
    model: ServingModel, tensor: Tensor, values: np.ndarray, received_at: float
) -> tuple[list[ModelInput], list[UploadFacts]]:
    """Each row of an ``FP32`` ``[N, 3, H, W]`` input as the model input it already is: its
    face is the whole input (no upload, no detection), so a map of it is on the model input."""
    spec = model.meta.input
    expected = (3, spec.height, spec.width)
    if values.ndim != 4 or values.shape[1:] != expected:
        invalid(
            (*tensor.where, "shape"),
            f"{list(values.shape)}: the model input is [N, {', '.join(map(str, expected))}]",
        )
    size = (spec.width, spec.height)
    face = FaceChoice(whole_image(Image.new("RGB", size)), [], None, 0.0, size)
    info = ImageInfo(width=size[0], height=size[1], format="FP32", mode="tensor", frames=1)
    facts = UploadFacts(size, info, 0.0, received_at)
    rows = [ModelInput(face, np.ascontiguousarray(row), 0.0) for row in values]
    return rows, [facts] * len(rows)
