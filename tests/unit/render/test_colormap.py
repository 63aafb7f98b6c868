"""The lookup tables heatmaps and activation grids are coloured with."""

from __future__ import annotations

import numpy as np
import pytest

from service.render.colormap import DIVERGING, SEQUENTIAL


@pytest.mark.parametrize(("table", "name"), [(SEQUENTIAL, "inferno"), (DIVERGING, "RdBu_r")])
def test_lookup_tables_follow_matplotlib(table, name):
    colormaps = pytest.importorskip("matplotlib").colormaps
    expected = np.round(colormaps[name](np.linspace(0, 1, 256))[:, :3] * 255)
    assert np.abs(table.astype(int) - expected).max() <= 8  # 17 anchors: within 3%
