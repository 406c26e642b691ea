"""The shape the code keeps: no module over 450 lines and no function body over 100 lines (after
its docstring) in salmon/, components/ and pipelines/. A module that grows past it is split by
what it does; a recipe that grows is split into phases."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
ROOTS = ("salmon", "components", "pipelines")
MAX_MODULE_LINES = 450
MAX_BODY_LINES = 100


def _modules() -> list[Path]:
    return sorted(p for root in ROOTS for p in (REPO / root).rglob("*.py"))


def body_lines(node: ast.FunctionDef | ast.AsyncFunctionDef) -> int:
    """Lines of a function's body after its docstring."""
    body = node.body
    if body and isinstance(body[0], ast.Expr) and isinstance(body[0].value, ast.Constant) and isinstance(
            body[0].value.value, str):
        body = body[1:]
    if not body:
        return 0
    return int(body[-1].end_lineno or body[-1].lineno) - body[0].lineno + 1


def test_body_lines_counts_after_the_docstring() -> None:
    tree = ast.parse('def f():\n    """Doc.\n\n    More."""\n    a = 1\n    return a\n')
    assert body_lines(tree.body[0]) == 2  # type: ignore[arg-type]


@pytest.mark.parametrize("path", _modules(), ids=lambda p: str(p.relative_to(REPO)))
def test_module_and_function_sizes(path: Path) -> None:
    text = path.read_text(encoding="utf-8")
    assert len(text.splitlines()) <= MAX_MODULE_LINES, f"{path.name}: split it by what it does"
    long = [f"{node.name} ({body_lines(node)})" for node in ast.walk(ast.parse(text))
            if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef) and body_lines(node) > MAX_BODY_LINES]
    assert not long, f"functions over {MAX_BODY_LINES} lines: {long}"
