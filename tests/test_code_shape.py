"""Readability limits the code keeps: no function in ``transformer/`` longer than a screen or two."""

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "transformer"
MAX_FUNCTION_LINES = 120


def long_functions(source: str, limit: int) -> list[tuple[str, int]]:
    """(name, lines) of every function or method in ``source`` longer than ``limit`` lines."""
    return [
        (node.name, node.end_lineno - node.lineno + 1)
        for node in ast.walk(ast.parse(source))
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef)
        and node.end_lineno - node.lineno + 1 > limit
    ]


def test_the_length_check_finds_a_long_function():
    body = "".join(f"    x{i} = {i}\n" for i in range(MAX_FUNCTION_LINES))
    assert long_functions(f"def short():\n    pass\n\ndef long():\n{body}", MAX_FUNCTION_LINES) == [
        ("long", MAX_FUNCTION_LINES + 1)
    ]


def test_no_function_in_the_package_is_over_120_lines():
    too_long = {
        f"{path.name}:{name}": lines
        for path in sorted(PACKAGE.glob("*.py"))
        for name, lines in long_functions(path.read_text(), MAX_FUNCTION_LINES)
    }
    assert not too_long, f"functions over {MAX_FUNCTION_LINES} lines: {too_long}"
