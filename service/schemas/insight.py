"""Response bodies of the /insight endpoints. Field descriptions end up in openapi.yaml."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, Field

from service.insight.architecture import AxisField
from service.insight.grid import GAP, GridLayout
from service.insight.patches import Patch
from service.schemas.common import FaceBox


class GridInfo(BaseModel):
    """Where the tiles of a grid PNG are: tile ``i`` is at column ``i % columns``, row
    ``i // columns``; its top-left pixel at ``(gap + column * (tile + gap), gap + row * (tile
    + gap))``."""

    columns: int
    rows: int
    tile: int = Field(description="tile side in pixels")
    gap: int = Field(description="white pixels between and around tiles")
    width: int
    height: int

    @classmethod
    def of(cls, layout: GridLayout) -> GridInfo:
        return cls(
            columns=layout.columns,
            rows=layout.rows,
            tile=layout.tile,
            gap=GAP,
            width=layout.width,
            height=layout.height,
        )


class ActivationMap(BaseModel):
    channel: int
    mean: float = Field(description="mean activation over the map (the ranking)")
    max: float = Field(description="largest activation in the map")
    values: list[list[float]] = Field(description="the map, rows top to bottom, 4 decimals")


class ActivationsResponse(BaseModel):
    """A layer's strongest activation maps for the uploaded face, strongest first."""

    layer: str
    channels: int = Field(description="channels in the layer")
    maps: list[ActivationMap]
    grid: GridInfo = Field(description="the layout of the png format's grid (tile i = maps[i])")
    face_box: FaceBox
    face_index: int | None = Field(
        description="which detected face was used; null: the whole image"
    )


class AxisInfo(BaseModel):
    size: int = Field(description="input pixels a unit's field spans (may exceed the input)")
    jump: int = Field(description="input pixels between neighbouring units: the effective stride")
    start: float = Field(
        description="centre of unit 0's field in input pixel indices; unit i's is start + i * jump"
    )
    first: int = Field(description="first input pixel any unit of the layer can see")
    last: int = Field(
        description="last input pixel any unit of the layer can see (a window that does not "
        "fit drops the input's last pixels)"
    )

    @classmethod
    def of(cls, axis: AxisField) -> AxisInfo:
        return cls(
            size=axis.size, jump=axis.jump, start=axis.start, first=axis.first, last=axis.last
        )


class LayerField(BaseModel):
    name: str
    channels: int
    height: int
    width: int
    rows: AxisInfo = Field(description="along the height")
    cols: AxisInfo = Field(description="along the width")


class ReceptiveFieldResponse(BaseModel):
    """Every layer's receptive field in the model input (``input_height x input_width``
    pixels), computed from the kernel sizes, strides and paddings in the twin's graph: unit
    ``(r, c)`` sees input rows ``start + r * jump +- (size - 1) / 2``, clipped to
    ``first .. last`` (likewise columns)."""

    input_height: int
    input_width: int
    layers: list[LayerField]


class TopPatchesResponse(BaseModel):
    """The training patches that excite one channel most, strongest first (one per image)."""

    layer: str
    channel: int
    split: Literal["train"]
    images: int = Field(description="training images searched")
    field_size: int = Field(
        description="receptive field side in model-input pixels; patches show it whole"
    )
    patches: list[Patch]
    grid: GridInfo = Field(description="the layout of the png format's grid (tile i = patches[i])")


class SynthesisResponse(BaseModel):
    """An image synthesised by gradient ascent from noise, and how far the score rose."""

    objective: str = Field(
        description="`class <id>` (its logit) or `<layer> channel <c>` (its mean activation)"
    )
    score_start: float = Field(description="the score of the starting noise")
    score_end: float = Field(description="the score of the returned 8-bit image")
    probability_start: float | None = Field(
        description="for a class: its softmax probability at the start"
    )
    probability_end: float | None = Field(
        description="for a class: its softmax probability for the returned image"
    )
    steps: int = Field(description="steps taken (always the `steps` asked for)")
    elapsed_ms: float = Field(description="time the synthesis took when it was computed")
    cached: bool = Field(description="whether it came from the cache")
    parameters: dict[str, Any]
    image: str = Field(description="the image, a PNG data URL of the model's input size")
