"""Import direction inside the packages, read from the source (every import, also those
inside functions, which only hide a dependency from the import-time check):

- the model layer (service/models/) does not depend on the HTTP layer (service/api/,
  service/web/): what both need lies below both;
- the modules of `training` import each other in one direction only (no cycles).
"""

from __future__ import annotations

import ast
from pathlib import Path

from tests.conftest import REPO


def _module(path: Path) -> str:
    parts = path.relative_to(REPO).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _imports(path: Path) -> set[str]:
    """Modules `path` imports (absolute names; `from a.b import c` counts as a.b and a.b.c)."""
    here = _module(path)
    package = here if path.name == "__init__.py" else here.rpartition(".")[0]
    out: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            out.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join([*anchor, base] if base else anchor)
            out.add(base)
            out.update(f"{base}.{alias.name}" for alias in node.names)
    return out


def _graph(package: str) -> dict[str, set[str]]:
    files = {_module(p): p for p in (REPO / package).rglob("*.py")}
    return {name: _imports(path) & files.keys() - {name} for name, path in files.items()}


def test_the_model_layer_does_not_import_the_http_layer() -> None:
    graph = _graph("service")
    offenders = {
        (name, dep)
        for name, deps in graph.items()
        if name.startswith("service.models")
        for dep in deps
        if dep.startswith(("service.api", "service.web"))
    }
    assert not offenders, offenders


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """One cycle through each strongly connected group of modules (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    found: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        for w in graph[v]:
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            group = []
            while True:
                w = stack.pop()
                group.append(w)
                if w == v:
                    break
            if len(group) > 1:
                found.append(sorted(group))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return found


def test_training_modules_import_each_other_in_one_direction() -> None:
    # a package's __init__ runs before any module in it: an import of it is not an edge
    graph = {
        name: {d for d in deps if not name.startswith(d + ".")}
        for name, deps in _graph("training").items()
    }
    assert _cycles(graph) == []


def test_the_cycle_check_finds_a_cycle() -> None:
    assert _cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]
