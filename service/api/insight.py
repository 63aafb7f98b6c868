"""/insight/*: what the network has learned, layer by layer.

- ``GET /insight/filters``: the filters that make a layer's channels, as a grid image;
- ``POST /insight/activations``: a photo's strongest activation maps in a layer;
- ``GET /insight/receptive-field``: every layer's receptive field, from the twin's graph;
- ``GET /insight/top-patches``: the training patches that excite a channel most (stored in
  the bundle by ``python -m training insight``);
- ``GET /insight/maximize``: an image synthesised to excite a class or a channel.

Layer names are those of ``meta.json`` ``layers``. Grids follow ``service.insight.grid``: tiles
row by row, ``ceil(sqrt(n))`` columns, 2-pixel white gaps.
"""

from __future__ import annotations

import base64
from typing import Annotated, Any, Literal

import numpy as np
from fastapi import APIRouter, Depends, Query
from fastapi.responses import Response
from PIL import Image
from pydantic import ConfigDict, Field, model_validator
from starlette.concurrency import run_in_threadpool

from service.api.deps import (
    ClientDep,
    ModelDep,
    ModelInputDep,
    StateDep,
    api_key_guard,
    class_index,
    explanation_slot,
    in_flight_slot,
)
from service.api.placement import ON_EXPLAIN, ON_GATEWAY
from service.bundle.format import TWIN_FILE
from service.errors import NoTopPatches, NotReady, UnknownChannel, UnknownLayer
from service.insight.inspector import Grid, Inspector
from service.insight.maximize import MaximizeParams, Objective, Synthesis
from service.render.png import as_rows, encode_png
from service.schemas.common import FaceBox, error_responses
from service.schemas.insight import (
    ActivationMap,
    ActivationsResponse,
    AxisInfo,
    GridInfo,
    LayerField,
    ReceptiveFieldResponse,
    SynthesisResponse,
    TopPatchesResponse,
)

PNG_MEDIA_TYPE = "image/png"
CHANNELS_HEADER = "X-Channels"
MAX_TOP = 256

router = APIRouter(prefix="/insight", tags=["insight"], dependencies=[Depends(api_key_guard)])


async def get_inspector(model: ModelDep, state: StateDep) -> Inspector:
    """The inspector of the request's model (``ModelDep``: 503 until the default is loaded)."""
    inspector = state.inspector_of(model)
    if inspector is None:
        raise NotReady(state.reason, headers={"Retry-After": "5"})
    return inspector


InspectorDep = Annotated[Inspector, Depends(get_inspector)]
LayerQuery = Annotated[
    str,
    Query(
        description="layer name, as meta.json `layers` lists them (e.g. stem, layer1 ... layer5)"
    ),
]
ChannelQuery = Annotated[int, Query(ge=0, description="channel index in the layer, from 0")]
FormatQuery = Annotated[
    Literal["png", "json"], Query(description="png: the grid image; json: the numbers")
]


class MaximizeQuery(MaximizeParams):
    """``class`` or ``layer`` with ``channel``, plus the synthesis parameters."""

    model_config = ConfigDict(frozen=True, extra="ignore", populate_by_name=True)

    class_: str | None = Field(None, alias="class", description="class id whose logit to maximise")
    layer: str | None = Field(
        None, description="layer of the channel whose mean activation to maximise"
    )
    channel: int | None = Field(None, ge=0, description="channel of `layer`")
    format: Literal["png", "json"] = Field(
        "png", description="png: the image; json: the scores and the image as a data URL"
    )
    max_seconds: float | None = Field(
        None,
        gt=0,
        le=60,
        deprecated=True,
        description="ignored: the ascent always runs its `steps`, so that the same parameters "
        "give the same image under any load (`steps` bounds what it costs)",
    )

    @model_validator(mode="after")
    def _one_objective(self) -> MaximizeQuery:
        if (self.class_ is None) == (self.layer is None) or (self.layer is None) != (
            self.channel is None
        ):
            raise ValueError("give either class, or layer and channel")
        return self


GRID_RESPONSE: dict[int | str, dict[str, Any]] = {
    200: {"content": {PNG_MEDIA_TYPE: {}}, "description": "grid PNG"}
}
EITHER_RESPONSE: dict[int | str, dict[str, Any]] = {
    200: {
        "content": {PNG_MEDIA_TYPE: {}},
        "description": "JSON (format=json) or the PNG (format=png)",
    }
}


@router.get(
    "/filters",
    summary="A layer's filters as an image grid",
    description="The filters that make the layer's channels (for a stage, its last convolution), "
    "one tile per filter. The first layer's (the stem's 32 7x7 filters on RGB) are drawn in "
    "colour; deeper filters, with many input channels, as the grey mean over their input channels. "
    "Each filter is scaled by its own largest magnitude: mid-grey is 0. A k x k filter is enlarged "
    "to k * (48 // k) pixels (7x7: 42, 3x3: 48).",
    response_class=Response,
    responses={**GRID_RESPONSE, **error_responses(401, 404, 422, 503)},
    dependencies=[ON_GATEWAY],
)
async def filters(inspector: InspectorDep, layer: LayerQuery) -> Response:
    _check_layer(inspector, layer)
    grid = await run_in_threadpool(inspector.filters, layer)
    return Response(grid.png, media_type=PNG_MEDIA_TYPE)


@router.post(
    "/activations",
    response_model=ActivationsResponse,
    summary="A photo's strongest activation maps in a layer",
    description="The face is found and aligned as for /predict; the `top` channels of the layer "
    "with the largest mean activation, strongest first, as an inferno-coloured grid on one scale "
    "(black 0, pale yellow the 99.5th percentile of the values shown and above). An s x s map is "
    "enlarged to s * (96 // s) pixels. The PNG's `X-Channels` header lists the channel of every "
    "tile.",
    responses={**EITHER_RESPONSE, **error_responses(400, 401, 404, 413, 415, 422, 503)},
    dependencies=[Depends(in_flight_slot), ON_GATEWAY],
)
async def activations(
    inspector: InspectorDep,
    inputs: ModelInputDep,
    layer: LayerQuery,
    top: Annotated[
        int, Query(ge=1, le=MAX_TOP, description="how many channels (all when the layer has fewer)")
    ] = 16,
    format: FormatQuery = "png",
) -> ActivationsResponse | Response:
    _check_layer(inspector, layer)
    found = await run_in_threadpool(inspector.activations, inputs.x, layer, top)
    grid = await run_in_threadpool(inspector.activation_grid, found)
    if format == "png":
        return _png(grid, {CHANNELS_HEADER: ",".join(map(str, found.channels))})
    return ActivationsResponse(
        layer=layer,
        channels=inspector.channels[layer],
        maps=[
            ActivationMap(channel=c, mean=m, max=p, values=as_rows(values))
            for c, m, p, values in zip(
                found.channels, found.means, found.peaks, found.maps, strict=True
            )
        ],
        grid=GridInfo.of(grid.layout),
        face_box=FaceBox.of(inputs.face),
        face_index=inputs.face.index,
    )


@router.get(
    "/receptive-field",
    summary="Every layer's receptive field",
    responses=error_responses(401, 404, 503),
    dependencies=[ON_GATEWAY],
)
async def receptive_field(inspector: InspectorDep) -> ReceptiveFieldResponse:
    """Size, jump (effective stride) and start of every layer's receptive field, from the
    convolution and pooling kernels, strides and paddings in the twin's graph."""
    fields = await run_in_threadpool(lambda: inspector.fields)
    spec = inspector.model.meta.input
    return ReceptiveFieldResponse(
        input_height=spec.height,
        input_width=spec.width,
        layers=[
            LayerField(
                name=name,
                channels=f.shape[0],
                height=f.shape[1],
                width=f.shape[2],
                rows=AxisInfo.of(f.rows),
                cols=AxisInfo.of(f.cols),
            )
            for name, f in fields.items()
        ],
    )


@router.get(
    "/top-patches",
    response_model=TopPatchesResponse,
    summary="The training patches that excite a channel most",
    description="Computed offline from the bundle's training split and stored in the bundle "
    "(`python -m training insight`): for each of the channel's top images, the patch under the "
    "unit where it peaks, cropped to that unit's receptive field (parts outside the image in the "
    "input mean colour), strongest first. Patch tiles are enlarged by 96 // tile (stem: 11 px -> "
    "88).",
    responses={**EITHER_RESPONSE, **error_responses(401, 404, 422, 503)},
    dependencies=[ON_GATEWAY],
)
async def top_patches(
    inspector: InspectorDep, layer: LayerQuery, channel: ChannelQuery, format: FormatQuery = "png"
) -> TopPatchesResponse | Response:
    stored = inspector.top_patches
    if stored is None:
        raise NoTopPatches(
            f"bundle {inspector.model.meta.name} stores no top patches; "
            "compute them with `python -m training insight --bundle <bundle dir>`"
        )
    twin_sha256 = inspector.model.meta.files[TWIN_FILE].sha256
    if stored.index.model_sha256 != twin_sha256:
        raise NoTopPatches(
            f"the stored top patches were computed by another model (twin sha256 "
            f"{stored.index.model_sha256[:12]}..., served {twin_sha256[:12]}...); recompute them "
            "with `python -m training insight --bundle <bundle dir>`"
        )
    if layer not in stored.layers:
        raise UnknownLayer(
            f"no top patches for layer {layer!r}; stored for: {', '.join(stored.layers)}"
        )
    _check_channel(inspector, layer, channel)
    grid = await run_in_threadpool(inspector.patch_grid, layer, channel)
    if format == "png":
        return _png(grid)
    return TopPatchesResponse(
        layer=layer,
        channel=channel,
        split=stored.index.split,
        images=stored.index.images,
        field_size=stored.index.layers[layer].field_size,
        patches=stored.patches(layer, channel),
        grid=GridInfo.of(grid.layout),
    )


@router.get(
    "/maximize",
    response_model=SynthesisResponse,
    summary="An image synthesised to excite a class or a channel",
    description="Gradient ascent on the pixels through the twin (Simonyan et al. 2014), from "
    "smooth random colours plus noise, with L2 and total-variation penalties, jitter and a blur "
    "every few steps. Give `class`, or `layer` and `channel`. Exactly `steps` steps, however "
    "busy the service is, so the same parameters give the same image; results are cached per "
    "model and parameters. A client that hangs "
    "up stops the ascent at its next step.",
    responses={**EITHER_RESPONSE, **error_responses(401, 404, 422, 503)},
    dependencies=[Depends(in_flight_slot), Depends(explanation_slot), ON_EXPLAIN],
)
async def maximize(
    inspector: InspectorDep, query: Annotated[MaximizeQuery, Query()], cancellation: ClientDep
) -> SynthesisResponse | Response:
    objective = objective_of(inspector, query)
    params = maximize_params(query)
    result, cached = await run_in_threadpool(inspector.synthesize, objective, params, cancellation)
    png = await run_in_threadpool(encode_synthesis, result.image)
    if query.format == "png":
        return Response(png, media_type=PNG_MEDIA_TYPE)
    return synthesis_response(query, params, result, cached, png)


def maximize_params(query: MaximizeQuery) -> MaximizeParams:
    return MaximizeParams(**query.model_dump(include=set(MaximizeParams.model_fields)))


def synthesis_response(
    query: MaximizeQuery, params: MaximizeParams, result: Synthesis, cached: bool, png: bytes
) -> SynthesisResponse:
    """The ``format=json`` answer of a synthesis."""
    name = (
        f"class {query.class_}"
        if query.class_ is not None
        else f"{query.layer} channel {query.channel}"
    )
    return SynthesisResponse(
        objective=name,
        score_start=result.score_start,
        score_end=result.score_end,
        probability_start=result.probability_start,
        probability_end=result.probability_end,
        steps=result.steps,
        elapsed_ms=result.elapsed_ms,
        cached=cached,
        parameters=params.model_dump(),
        image="data:image/png;base64," + base64.b64encode(png).decode("ascii"),
    )


def objective_of(inspector: Inspector, query: MaximizeQuery) -> Objective:
    if query.class_ is not None:
        return Objective(class_index=class_index(inspector.model, query.class_))
    layer, channel = (
        str(query.layer),
        int(query.channel or 0),
    )  # both given: checked by the query model
    _check_layer(inspector, layer)
    _check_channel(inspector, layer, channel)
    return Objective(layer=layer, channel=channel)


def _check_layer(inspector: Inspector, layer: str) -> None:
    if layer not in inspector.channels:
        raise UnknownLayer(
            f"{layer!r} is not a layer of this model; valid: {', '.join(inspector.layers)}"
        )


def _check_channel(inspector: Inspector, layer: str, channel: int) -> None:
    channels = inspector.channels[layer]
    if channel >= channels:
        raise UnknownChannel(
            f"layer {layer} has {channels} channels: valid channels are 0..{channels - 1}"
        )


def _png(grid: Grid, headers: dict[str, str] | None = None) -> Response:
    return Response(grid.png, media_type=PNG_MEDIA_TYPE, headers=headers)


def encode_synthesis(pixels: np.ndarray) -> bytes:
    return encode_png(Image.fromarray(pixels))
