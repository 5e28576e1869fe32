"""The package's shape, read from its source: no import cycle (module level or inside
functions), and dependencies that point one way, from data up to the commands."""

from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "ehr_ssl"
# Each module's layer; a module may import its own layer and those below, never above.
LAYERS = {
    "ehr_ssl": 0,  # __init__ (the version), errors, atomic, layout, settings, config
    "ehr_ssl.data": 1,
    "ehr_ssl.tokens": 2,
    "ehr_ssl.model": 3,
    "ehr_ssl.training": 4,
    "ehr_ssl.evaluation": 5,
    "ehr_ssl.deploy": 6,
    "ehr_ssl.pipeline": 7,
    "ehr_ssl.api": 8,
    "ehr_ssl.cli": 9,
}


def module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imports_of(path: Path, modules: set[str]) -> set[str]:
    """Every ehr_ssl module `path` imports, wherever the import statement stands."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            # `from ehr_ssl.x import y` names module ehr_ssl.x.y when y is a module
            found |= {f"{node.module}.{a.name}" for a in node.names} | {node.module}
    return {name for name in found if name in modules}


def import_graph() -> dict[str, set[str]]:
    paths = {module_name(p): p for p in PACKAGE.rglob("*.py")}
    modules = set(paths)
    graph = {name: imports_of(path, modules) - {name} for name, path in paths.items()}
    for name in graph:  # importing a package runs its __init__: not an edge of its own here
        graph[name] = {m for m in graph[name] if not name.startswith(m + ".")}
    return graph


def layer(module: str) -> int:
    owner = max((p for p in LAYERS if module == p or module.startswith(p + ".")), key=len)
    return LAYERS[owner]


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    state: dict[str, int] = {}  # 1 = on the current path, 2 = done
    path: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        path.append(node)
        for nxt in sorted(graph[node]):
            if state.get(nxt) == 1:
                return path[path.index(nxt) :] + [nxt]
            if nxt not in state and (cycle := visit(nxt)):
                return cycle
        path.pop()
        state[node] = 2
        return None

    for node in sorted(graph):
        if node not in state and (cycle := visit(node)):
            return cycle
    return None


def test_the_graph_sees_imports_inside_functions():
    graph = import_graph()
    assert "ehr_ssl.pipeline" in graph["ehr_ssl.cli.run"]  # imported inside cmd_run
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]


def test_no_import_cycles():
    assert find_cycle(import_graph()) is None


def test_dependencies_point_one_way():
    upward = [
        f"{module} -> {target}"
        for module, targets in sorted(import_graph().items())
        for target in sorted(targets)
        if layer(target) > layer(module)
    ]
    assert upward == []
