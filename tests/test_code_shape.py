"""The shape DESIGN.md asks of the code: a thin facade, no function over 100 lines."""

from __future__ import annotations

import ast
from pathlib import Path

SRC = Path(__file__).resolve().parents[1] / "src" / "wager"


def _long_functions(limit: int) -> list[str]:
    out = []
    for path in sorted(SRC.rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
                assert node.end_lineno is not None
                n = node.end_lineno - node.lineno + 1
                if n > limit:
                    out.append(f"{path.relative_to(SRC)}:{node.lineno} {node.name} ({n} lines)")
    return out


def test_no_function_is_over_100_lines():
    assert _long_functions(100) == []


def test_the_facade_class_is_at_most_400_lines():
    tree = ast.parse((SRC / "recommender" / "facade.py").read_text(encoding="utf-8"))
    (cls,) = [n for n in tree.body if isinstance(n, ast.ClassDef) and n.name == "Recommender"]
    assert cls.end_lineno is not None
    assert cls.end_lineno - cls.lineno + 1 <= 400


def test_the_check_counts_lines_from_def_to_end():
    # a 3-line function: def, docstring, return
    tree = ast.parse('def f():\n    """doc."""\n    return 1\n')
    node = tree.body[0]
    assert isinstance(node, ast.FunctionDef)
    assert node.end_lineno is not None and node.end_lineno - node.lineno + 1 == 3
