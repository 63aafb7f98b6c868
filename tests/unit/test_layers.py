"""The service's packages import downwards only, read from the source (no import is run).

``service.common`` is the bottom layer: it imports no other service package. ``explain`` and
``insight`` build on it side by side: neither imports the other, nor the routes, the model, the
engine or the app above them. Training may use the service's bundle format; the service never
imports training.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

SERVICE = Path(__file__).resolve().parents[2] / "service"

# package -> service modules (or packages) it must not import
FORBIDDEN: dict[str, tuple[str, ...]] = {
    "common": (
        "service.explain", "service.insight", "service.api", "service.inference.model",
        "service.inference.engine", "service.app", "service.bundle.format", "service.faces.finder",
    ),
    "explain": (
        "service.insight", "service.api", "service.inference.model",
        "service.inference.engine", "service.app",
    ),
    "insight": (
        "service.explain", "service.api", "service.inference.model",
        "service.inference.engine", "service.app",
    ),
}  # fmt: skip


def imported_modules(path: Path) -> set[str]:
    """Absolute names of the modules ``path`` imports (relative imports resolved)."""
    package = ".".join(path.relative_to(SERVICE.parent).with_suffix("").parts[:-1])
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[: len(package.split(".")) - node.level + 1]
                module = ".".join([*base, node.module] if node.module else base)
            else:
                module = node.module or ""
            names.add(module)
            names.update(f"{module}.{alias.name}" for alias in node.names)
    return names


def _violations(package: str) -> list[str]:
    found = []
    for path in sorted((SERVICE / package).rglob("*.py")):
        for name in sorted(imported_modules(path)):
            if any(name == bad or name.startswith(bad + ".") for bad in FORBIDDEN[package]):
                found.append(f"{path.relative_to(SERVICE.parent)} imports {name}")
    return found


@pytest.mark.parametrize("package", list(FORBIDDEN))
def test_package_imports_only_lower_layers(package: str):
    assert _violations(package) == []


def test_the_service_never_imports_training():
    found = [
        f"{path.relative_to(SERVICE.parent)} imports {name}"
        for path in sorted(SERVICE.rglob("*.py"))
        for name in imported_modules(path)
        if name == "training" or name.startswith("training.")
    ]
    assert found == []


def test_relative_imports_are_resolved():
    # the checker itself: ``from ..x import y`` in service/<package>/ names service.x and
    # service.x.y
    assert {"service.common.softmax", "service.common.softmax.softmax"} <= imported_modules(
        SERVICE / "explain" / "heatmap.py"
    )
    assert "service.common.cancellation" in imported_modules(SERVICE / "insight" / "maximize.py")
