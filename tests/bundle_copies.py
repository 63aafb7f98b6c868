"""Model bundles made cheaply from another, for tests of several models side by side."""

from __future__ import annotations

import json
from pathlib import Path


def bundle_copy(source: Path, target: Path, name: str, corrupt: str | None = None) -> Path:
    """A bundle at ``target`` named ``name``: ``source``'s files linked, its meta.json
    rewritten with the new name (meta.json is not among the hashed files), and where
    ``corrupt`` names a file, a wrong sha256 recorded for it (its load-time check fails)."""
    target.mkdir(parents=True)
    for entry in source.iterdir():
        if entry.name != "meta.json":
            (target / entry.name).symlink_to(entry.resolve())
    meta = json.loads((source / "meta.json").read_text())
    meta["name"] = name
    if corrupt is not None:
        meta["files"][corrupt]["sha256"] = "0" * 64
    (target / "meta.json").write_text(json.dumps(meta))
    return target
