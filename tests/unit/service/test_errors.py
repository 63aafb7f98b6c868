from __future__ import annotations

import re
from pathlib import Path

from service.errors import all_error_codes

README = Path(__file__).resolve().parents[3] / "README.md"


def test_readme_documents_every_error_code_with_its_status():
    documented = dict(
        (code, int(status))
        for status, code in re.findall(r"^\| (\d{3}) \| `([a-z_]+)` \|", README.read_text(), re.M)
    )

    assert documented == all_error_codes()
