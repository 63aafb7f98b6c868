from __future__ import annotations

import re
from pathlib import Path

from service.errors import all_error_codes

API_DOCS = Path(__file__).resolve().parents[2] / "docs" / "api.md"


def test_api_docs_document_every_error_code_with_its_status():
    documented = dict(
        (code, int(status))
        for status, code in re.findall(r"^\| (\d{3}) \| `([a-z_]+)` \|", API_DOCS.read_text(), re.M)
    )

    assert documented == all_error_codes()
