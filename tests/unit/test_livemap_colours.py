"""The page draws partial maps with the service's own colormaps: livemap.js holds the same
anchor colours as service/render/colormap.py."""

from __future__ import annotations

import json
import re
from pathlib import Path

from service.render import colormap

LIVEMAP = Path(__file__).resolve().parents[2] / "service" / "static" / "livemap.js"


def anchors(name: str) -> list[list[int]]:
    found = re.search(rf"const {name} = (\[.*?\]);", LIVEMAP.read_text(), re.S)
    assert found, f"no {name} in livemap.js"
    return json.loads(re.sub(r",\s*\]$", "]", found.group(1).strip()))


def test_the_page_draws_with_the_service_colormaps() -> None:
    assert anchors("INFERNO") == [list(c) for c in colormap._INFERNO_ANCHORS]
    assert anchors("RDBU_R") == [list(c) for c in colormap._RDBU_R_ANCHORS]
