"""Changing one part of a bundle's meta.json in place: the one writer for the commands that add
to a finished bundle (``quantize``, ``sanity``, ``twin``).

``update_meta`` reads meta.json, lets the caller change its dict, lists the named files again with
their sha256 and size, validates the result as the service reads it and writes it atomically with
the file's 2-space indent; every other key, and the key order, stays.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

from service.bundle.checks import sha256_of
from service.bundle.format import META_FILE, BundleMeta


def update_meta(
    bundle: Path, change: Callable[[dict[str, Any]], None], files: Iterable[str] = ()
) -> None:
    """Apply ``change`` to ``bundle``'s meta.json and list ``files`` (bundle-relative, already
    written) with their sha256 and bytes."""
    path = bundle / META_FILE
    raw = json.loads(path.read_text(encoding="utf-8"))
    change(raw)
    for name in files:
        written = bundle / name
        raw["files"][name] = {"sha256": sha256_of(written), "bytes": written.stat().st_size}
    raw["files"] = dict(sorted(raw["files"].items()))
    BundleMeta.model_validate(raw)  # what the service will read: fail here, not there
    staged = path.with_name(f".{META_FILE}.tmp-{os.getpid()}")
    staged.write_text(json.dumps(raw, indent=2) + "\n", encoding="utf-8")
    os.replace(staged, path)
