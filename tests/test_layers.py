"""The layers import one way: tools -> api, workers -> service -> (nothing of ours above it),
and everything may use gistnet, which imports none of them. Read from the source, so a
stray import fails here before it couples two processes at run time."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
OURS = {"gistnet", "service", "api", "workers", "tools", "migrations"}
# Which of our top-level packages each package may import.
ALLOWED = {
    "gistnet": {"gistnet"},
    "service": {"service", "gistnet"},
    "api": {"api", "service", "gistnet"},
    "workers": {"workers", "service", "gistnet"},
    "migrations": {"migrations", "service"},
    "tools": OURS,
}


def imported_packages(path: Path) -> set[str]:
    tree = ast.parse(path.read_text(), filename=str(path))
    names: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names.update(alias.name.split(".")[0] for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names.add(node.module.split(".")[0])
    return names & OURS


@pytest.mark.parametrize("package", sorted(ALLOWED))
def test_each_layer_imports_only_the_layers_below_it(package):
    wrong = {}
    for path in sorted((ROOT / package).rglob("*.py")):
        extra = imported_packages(path) - ALLOWED[package]
        if extra:
            wrong[str(path.relative_to(ROOT))] = sorted(extra)
    assert not wrong, f"{package}/ imports layers above it: {wrong}"


def test_the_client_speaks_http_only():
    client = ROOT / "gistnet" / "client.py"
    assert client.is_file(), "gistnet/client.py is the service's client: it must exist"
    assert imported_packages(client) <= {"gistnet"}
