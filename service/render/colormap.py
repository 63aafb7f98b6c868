"""The colours every picture of a map is drawn with: 256-entry lookup tables.

Unsigned maps (``[0, 1]``) use a sequential colormap (inferno), signed maps (``[-1, 1]``) a
diverging one (red = evidence for the target, blue = against, white = neither). The tables are
interpolated from anchor colours taken from matplotlib's ``inferno`` and ``RdBu_r`` at 17 even
steps, so the service needs no plotting library. Heatmaps (``render.png``) and activation
grids (``insight.grid``) share them, so one colour means the same everywhere.
"""

from __future__ import annotations

import numpy as np

_INFERNO_ANCHORS = (
    (0, 0, 4), (11, 7, 36), (33, 12, 74), (61, 9, 101), (87, 16, 110), (113, 25, 110),
    (138, 34, 106), (163, 44, 97), (188, 55, 84), (210, 70, 68), (228, 90, 49), (241, 115, 29),
    (249, 142, 9), (252, 172, 17), (249, 203, 53), (242, 234, 105), (252, 255, 164),
)  # fmt: skip
_RDBU_R_ANCHORS = (
    (5, 48, 97), (23, 82, 144), (42, 113, 178), (63, 142, 192), (107, 172, 209),
    (155, 201, 224), (194, 221, 236), (224, 236, 243), (247, 246, 246), (251, 229, 216),
    (251, 204, 180), (245, 170, 137), (228, 128, 102), (208, 85, 72), (186, 40, 50),
    (147, 14, 38), (103, 0, 31),
)  # fmt: skip


def lookup_table(anchors: tuple[tuple[int, int, int], ...], size: int = 256) -> np.ndarray:
    """``(size, 3)`` uint8 colours linearly interpolated between evenly spaced ``anchors``."""
    colours = np.asarray(anchors, dtype=np.float64)
    positions = np.linspace(0.0, 1.0, len(colours))
    steps = np.linspace(0.0, 1.0, size)
    channels = [np.interp(steps, positions, colours[:, c]) for c in range(3)]
    return np.round(np.stack(channels, axis=1)).astype(np.uint8)


SEQUENTIAL = lookup_table(_INFERNO_ANCHORS)
DIVERGING = lookup_table(_RDBU_R_ANCHORS)
