"""The data layer's module graph has no cycle (issue 13).

Before: ``wager.data.loaders`` -> ``loaders.table`` -> ``wager.data.validate`` ->
``wager.data.loaders`` (the last edge inside a function, which a linter still counts).
Every import is counted here, at module level or inside a function.
"""

from __future__ import annotations

import ast
from pathlib import Path

import wager

SRC = Path(wager.__file__).parent


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(SRC.parent).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _graph(prefix: str) -> dict[str, set[str]]:
    modules = {_module_name(p): p for p in SRC.rglob("*.py")}
    graph: dict[str, set[str]] = {m: set() for m in modules if m.startswith(prefix)}
    for name in graph:
        for node in ast.walk(ast.parse(modules[name].read_text(encoding="utf-8"))):
            if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                targets = [node.module, *(f"{node.module}.{a.name}" for a in node.names)]
            elif isinstance(node, ast.Import):
                targets = [a.name for a in node.names]
            else:
                continue
            graph[name].update(t for t in targets if t in graph and t != name)
    return graph


def _cycle(graph: dict[str, set[str]]) -> list[str] | None:
    state: dict[str, int] = {}  # 1 = on the path, 2 = done
    path: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        path.append(node)
        for nxt in sorted(graph[node]):
            if state.get(nxt) == 1:
                return [*path[path.index(nxt) :], nxt]
            if nxt not in state and (found := visit(nxt)):
                return found
        path.pop()
        state[node] = 2
        return None

    for start in sorted(graph):
        if start not in state and (found := visit(start)):
            return found
    return None


def test_cycle_finder_finds_a_cycle() -> None:
    assert _cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert _cycle({"a": {"b"}, "b": set()}) is None


def test_data_layer_has_no_import_cycle() -> None:
    graph = _graph("wager.data")
    assert "wager.data.checks" in graph["wager.data.loaders.table"]
    assert "wager.data.loaders" in graph["wager.data.validate"]
    assert _cycle(graph) is None, " -> ".join(_cycle(graph) or [])
