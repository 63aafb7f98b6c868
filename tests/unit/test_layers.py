"""The service's packages import downwards only, along the request path (read from the source;
no import is run).

``LAYERS`` lists the packages from the bottom up: a package may import its own modules and the
packages of lower layers, never a package of its own layer or above. So the arrows point one
way (no cycle between packages), the domain (bundle, faces, inference, explain, render, jobs,
insight, the explanation use case) knows nothing of the HTTP routers above it, and a new
package must be placed here on purpose. The domain imports no web framework either; training
imports the bundle contract and names every other service module it uses.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from bench.architecture import imported_names

ROOT = Path(__file__).resolve().parents[2]
SERVICE = ROOT / "service"

# bottom first; a top-level module of service/ is named like a package ("explanations")
LAYERS: tuple[frozenset[str], ...] = tuple(
    frozenset(layer.split())
    for layer in (
        "errors common",
        "settings observability bundle explain",
        "intake faces",
        "render inference",
        "insight",
        "jobs schemas",
        "explanations",
        "state http",
        "api",
        "app",
        "scaleout",
        "__main__ client",
    )
)
LAYER_OF = {package: index for index, layer in enumerate(LAYERS) for package in layer}
# No FastAPI, no Starlette routing or responses below the HTTP layer (Starlette's thread pool
# helper is only a way to run a function off the event loop).
DOMAIN = ("bundle", "faces", "inference", "intake", "explain", "render", "jobs", "insight")
DOMAIN += ("explanations", "common", "errors")
WEB_FRAMEWORKS = ("fastapi", "starlette")
ALLOWED_FRAMEWORK_MODULES = ("starlette.concurrency",)
# What training may use of the service beyond the bundle contract (service.bundle) and the
# shared helpers (service.common), and why.
TRAINING_MAY_IMPORT = {
    # dlib's model files and the face finder: the alignment template is measured with the
    # landmarks the service crops with, and the face network's weights are read from there
    "service.faces.model_files",
    # the same receptive fields and top patches the service shows (insight data in the bundle)
    "service.insight.architecture",
    "service.insight.patches",
    # the explanation methods themselves: the sanity check (training/sanity.py) runs every
    # method on randomised copies of the twin and stores the result in the bundle
    "service.explain",
}


def imported_modules(path: Path, package: str | None = None) -> set[str]:
    """What ``path`` imports, as absolute names (``bench.architecture.imported_names``), its
    relative imports resolved against ``package`` (by default: where it lies)."""
    if package is None:
        package = ".".join(path.relative_to(ROOT).with_suffix("").parts[:-1])
    return imported_names(path, package)


def package_of(module: str) -> str | None:
    """The service package (or top-level module) that ``module`` belongs to, None outside the
    service or for ``service`` itself (its ``__version__``)."""
    parts = module.split(".")
    return parts[1] if parts[0] == "service" and len(parts) > 1 else None


def service_files() -> Iterator[tuple[str, Path]]:
    for path in sorted(SERVICE.rglob("*.py")):
        package = package_of(".".join(path.relative_to(ROOT).with_suffix("").parts))
        if package not in (None, "__init__"):  # service/__init__.py: the version alone
            yield package, path


def test_every_package_has_a_layer() -> None:
    unplaced = {package for package, _ in service_files()} - set(LAYER_OF)
    assert not unplaced, f"place these in LAYERS: {sorted(unplaced)}"


def test_packages_import_only_lower_layers() -> None:
    wrong = []
    for package, path in service_files():
        for name in sorted(imported_modules(path)):
            target = package_of(name)
            if target is None or target == package or target not in LAYER_OF:
                continue
            if LAYER_OF[target] >= LAYER_OF[package]:
                wrong.append(f"{path.relative_to(ROOT)} ({package}) imports {name} ({target})")
    assert not wrong, "\n".join(wrong)


@pytest.mark.parametrize("package", DOMAIN)
def test_the_domain_imports_no_web_framework(package: str) -> None:
    paths = [SERVICE / f"{package}.py"] if (SERVICE / f"{package}.py").is_file() else []
    paths += sorted((SERVICE / package).rglob("*.py"))
    assert paths, package
    found = [
        f"{path.relative_to(ROOT)} imports {name}"
        for path in paths
        for name in sorted(imported_modules(path))
        if name.split(".")[0] in WEB_FRAMEWORKS and not name.startswith(ALLOWED_FRAMEWORK_MODULES)
    ]
    assert not found, "\n".join(found)


def test_the_bundle_contract_needs_no_dlib_nor_onnx_runtime() -> None:
    found = [
        f"{path.relative_to(ROOT)} imports {name}"
        for path in sorted((SERVICE / "bundle").rglob("*.py"))
        for name in imported_modules(path)
        if name.split(".")[0] in ("dlib", "onnxruntime", *WEB_FRAMEWORKS)
    ]
    assert not found, "\n".join(found)


def test_training_imports_the_bundle_contract_not_the_service_internals() -> None:
    found = []
    for path in sorted((ROOT / "training").rglob("*.py")):
        for name in sorted(imported_modules(path)):
            if package_of(name) in (None, "bundle", "common"):
                continue
            if not any(name == ok or name.startswith(ok + ".") for ok in TRAINING_MAY_IMPORT):
                found.append(f"{path.relative_to(ROOT)} imports {name}")
    assert not found, "\n".join(found)


def test_the_service_never_imports_training() -> None:
    found = [
        f"{path.relative_to(ROOT)} imports {name}"
        for _, path in service_files()
        for name in imported_modules(path)
        if name.split(".")[0] == "training"
    ]
    assert not found, "\n".join(found)


def test_the_check_sees_imports_inside_functions_and_relative_ones(tmp_path: Path) -> None:
    assert {"service.common.softmax", "service.common.softmax.softmax"} <= imported_modules(
        SERVICE / "explain" / "heatmap.py"
    )
    assert "service.common.cancellation" in imported_modules(SERVICE / "insight" / "maximize.py")
    assert package_of("service.api.deps.ModelDep") == "api" and package_of("service") is None
    probe = tmp_path / "probe.py"
    probe.write_text("def late():\n    from ..api import deps\n", encoding="utf-8")
    names = imported_modules(probe, package="service.explain")
    assert "service.api.deps" in names
    upward = [n for n in names if LAYER_OF.get(package_of(n) or "", -1) > LAYER_OF["explain"]]
    assert upward == ["service.api", "service.api.deps"] or sorted(upward) == [
        "service.api",
        "service.api.deps",
    ]
