"""The shape of the code: modules, import edges between them, cycles, lines per package.

Reads the source of ``service/`` and ``training/`` (nothing is imported or run) and prints, for
the tree it is pointed at (default: this checkout), the number of modules, the import edges
between them (``a`` imports ``b``, each pair once, imports inside functions included), every
import cycle (strongly connected modules), the modules that sit directly in ``service/``, and
the lines of each package. Architecture reading, not speed: the figures depend on the source
alone.

    python bench/architecture.py
    python bench/architecture.py /path/to/another/checkout
"""

from __future__ import annotations

import argparse
import ast
import collections
from pathlib import Path

PACKAGES = ("service", "training")


def modules_of(root: Path) -> dict[str, tuple[Path, bool]]:
    """Dotted module name -> (file, whether it is a package's ``__init__``)."""
    found = {}
    for top in PACKAGES:
        for path in sorted((root / top).rglob("*.py")):
            parts = list(path.relative_to(root).with_suffix("").parts)
            is_package = parts[-1] == "__init__"
            found[".".join(parts[:-1] if is_package else parts)] = (path, is_package)
    return found


def imported_names(path: Path, package: str) -> set[str]:
    """Absolute names of what the module at ``path`` imports (relative imports resolved against
    its ``package``), anywhere in it, functions included: each module, and ``a.b`` for
    ``from a import b``."""
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


def import_edges(modules: dict[str, tuple[Path, bool]]) -> set[tuple[str, str]]:
    """(importer, imported) pairs between ``modules``, each imported name counted as the
    longest of ``modules`` it names."""
    edges = set()
    for name, (path, is_package) in modules.items():
        package = name if is_package else name.rpartition(".")[0]
        for target in imported_names(path, package):
            while target and target not in modules:
                target = target.rpartition(".")[0]
            if target and target != name:
                edges.add((name, target))
    return edges


def cycles(edges: set[tuple[str, str]]) -> list[list[str]]:
    """Strongly connected groups of more than one module (Tarjan)."""
    graph: dict[str, set[str]] = collections.defaultdict(set)
    for a, b in edges:
        graph[a].add(b)
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    found: list[list[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        for nxt in sorted(graph[node]):
            if nxt not in index:
                visit(nxt)
                low[node] = min(low[node], low[nxt])
            elif nxt in stack:
                low[node] = min(low[node], index[nxt])
        if low[node] == index[node]:
            group = []
            while True:
                member = stack.pop()
                group.append(member)
                if member == node:
                    break
            if len(group) > 1:
                found.append(sorted(group))

    for node in sorted(graph):
        if node not in index:
            visit(node)
    return found


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "root", nargs="?", type=Path, default=Path(__file__).resolve().parents[1],
        help="the checkout to read (default: this one)",
    )  # fmt: skip
    root = parser.parse_args().root
    modules = modules_of(root)
    edges = import_edges(modules)
    service = [m for m in modules if m.split(".")[0] == "service"]
    top = [m for m, (_, pkg) in modules.items() if m.count(".") == 1 and m in service and not pkg]
    into_service = {(a, b) for a, b in edges if a.startswith("training") and b in service}
    print(f"modules: {len(service)} in service/, {len(modules) - len(service)} in training/")
    print(f"modules directly in service/: {len(top)} ({', '.join(sorted(top))})")
    print(f"import edges: {len(edges)}, of which training -> service {len(into_service)}")
    print(f"training modules that import the service: {len({a for a, _ in into_service})}")
    found = cycles(edges)
    print(f"import cycles: {len(found)}" + "".join(f"\n  {' <-> '.join(c)}" for c in found))
    lines: collections.Counter[str] = collections.Counter()
    for name, (path, is_package) in modules.items():
        parts = name.split(".")
        deep = len(parts) > 2 or (is_package and len(parts) > 1)
        lines[".".join(parts[:2]) if deep else f"{parts[0]} (top level)"] += len(
            path.read_text(encoding="utf-8").splitlines()
        )
    print("lines per package:")
    for package, count in sorted(lines.items()):
        print(f"  {package:28s} {count:6d}")


if __name__ == "__main__":
    main()
