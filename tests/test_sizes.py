"""One concept per file: a module of the platform past 600 lines, or a function past 100,
holds two things and is split. Read from the source, like tests/test_layers.py."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("gistnet", "api", "service", "workers")
MAX_FILE_LINES = 600
MAX_FUNCTION_LINES = 100


def modules(package: str) -> list[Path]:
    return sorted((ROOT / package).rglob("*.py"))


def long_functions(source: str, where: str) -> dict[str, int]:
    """`where::function` (`where::Class.method`) -> its lines, for those past the bound."""
    found: dict[str, int] = {}

    def visit(node: ast.AST, prefix: str) -> None:
        for child in ast.iter_child_nodes(node):
            if isinstance(child, ast.FunctionDef | ast.AsyncFunctionDef):
                lines = child.end_lineno - child.lineno + 1
                if lines > MAX_FUNCTION_LINES:
                    found[f"{where}::{prefix}{child.name}"] = lines
                visit(child, f"{prefix}{child.name}.")
            elif isinstance(child, ast.ClassDef):
                visit(child, f"{prefix}{child.name}.")
            else:
                visit(child, prefix)

    visit(ast.parse(source, filename=where), "")
    return found


@pytest.mark.parametrize("package", PACKAGES)
def test_no_module_is_past_600_lines(package):
    long = {
        str(p.relative_to(ROOT)): n
        for p in modules(package)
        if (n := len(p.read_text().splitlines())) > MAX_FILE_LINES
    }
    assert not long, f"split these along their concepts (lines): {long}"


@pytest.mark.parametrize("package", PACKAGES)
def test_no_function_is_past_100_lines(package):
    long = {
        name: n
        for p in modules(package)
        for name, n in long_functions(p.read_text(), p.relative_to(ROOT).as_posix()).items()
    }
    assert not long, f"split these functions (lines): {long}"


def test_the_bound_sees_a_method_one_line_too_long():
    body = "".join(f"        x{i} = {i}\n" for i in range(MAX_FUNCTION_LINES - 1))
    fits = f"class C:\n    def m(self):\n{body}"
    assert long_functions(fits, "probe.py") == {}
    too_long = fits + "        return x0\n"
    assert long_functions(too_long, "probe.py") == {"probe.py::C.m": MAX_FUNCTION_LINES + 1}
