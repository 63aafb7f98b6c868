"""An explanation's heatmap laid back onto the upload: as a JSON grid or as a PNG.

The map is computed on the aligned face crop; the face's alignment matrix maps every pixel of
the upload (or of a grid scaled down from it) to the crop, so the map lands on the face where
it is in the photo, turned and scaled as it is there.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Literal

import numpy as np
from PIL import Image
from pydantic import BaseModel, Field

from service.explain import Heatmap
from service.faces.aligned import AlignedFace
from service.render.png import as_rows, blend_png, render_factor, rgba_png, scaled_size

# Longest side of the JSON grid: the image's own size up to this, scaled down beyond it.
MAX_JSON_SIDE = 256
PNG_MEDIA_TYPE = "image/png"
# On PNG answers: "true" when the map is negligible (drawn fully transparent), as in JSON.
NEGLIGIBLE_HEADER = "X-Heatmap-Negligible"

Format = Literal["json", "png", "overlay"]


class HeatmapGrid(BaseModel):
    """The heatmap in the coordinates of the uploaded image, 0 outside the face: row ``r``,
    column ``c`` is image pixel ``(c * image width / width, r * image height / height)``; the
    grid is the image's own size unless a side exceeds 256, then scaled down to fit."""

    width: int
    height: int
    signed: bool = Field(
        description="false: values in [0, 1], larger = more important; true: values in "
        "[-1, 1], positive = evidence for the target class, negative = against it"
    )
    value_range: tuple[float, float]
    units: str = Field(description="what values x scale measure")
    scale: float = Field(description="the largest raw magnitude: values x scale are in units")
    negligible: bool = Field(
        description="true when scale is below 1e-4 (the model's numerical noise): the map "
        "holds no evidence, and values are the raw ones (about 0), not stretched by 1 / scale"
    )
    values: list[list[float]] = Field(description="rows, top to bottom, 4 decimals")


def render_png(fmt: Format, upload: Image.Image, aligned: AlignedFace, heatmap: Heatmap) -> bytes:
    """The heatmap laid back from the face crop onto the ``upload`` (RGB), as ``fmt`` (png |
    overlay), the upload's size up to ``MAX_RENDER_PIXELS`` and scaled down to them beyond."""
    factor = render_factor(upload.size)
    on_image = placed(heatmap.values, aligned, scaled_size(upload.size, factor), factor)
    if fmt == "overlay":
        return blend_png(upload, on_image, heatmap.signed)
    return rgba_png(on_image, heatmap.signed)


def json_grid(heatmap: Heatmap, aligned: AlignedFace, image_size: tuple[int, int]) -> HeatmapGrid:
    """The heatmap laid back onto the upload, on a grid of the image's size scaled down to at
    most ``MAX_JSON_SIDE`` a side."""
    return values_grid(
        heatmap.values,
        aligned,
        image_size,
        signed=heatmap.signed,
        value_range=heatmap.value_range,
        units=heatmap.units,
        scale=heatmap.scale,
        negligible=heatmap.negligible,
    )


def values_grid(
    values: np.ndarray, aligned: AlignedFace, image_size: tuple[int, int], **described: Any
) -> HeatmapGrid:
    """``json_grid`` of a map's ``(H, W)`` values alone (a partial map), ``described`` by the
    other ``HeatmapGrid`` fields."""
    factor = min(1.0, MAX_JSON_SIDE / max(image_size))
    grid_size = scaled_size(image_size, factor)
    on_grid = placed(values, aligned, grid_size, factor)
    return HeatmapGrid(
        width=grid_size[0], height=grid_size[1], values=as_rows(on_grid), **described
    )


def placed(
    values: np.ndarray, aligned: AlignedFace, size: tuple[int, int], factor: float
) -> np.ndarray:
    """The map on a grid of ``size``: the upload's pixels times ``factor`` (<= 1)."""
    # grid cell -> image pixel (divide by the factor) -> crop pixel (the face's matrix)
    to_crop = aligned.matrix * np.array([[1 / factor, 1 / factor, 1.0]])
    return dataclasses.replace(aligned, matrix=to_crop).to_image(values, size)
