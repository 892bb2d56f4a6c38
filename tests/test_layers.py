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
    others = ("client_configs.py", "client_calls.py", "async_client.py")
    for part in (client, *(ROOT / "gistnet" / name for name in others)):
        assert imported_packages(part) <= {"gistnet"}, part


def _module_name(path: Path) -> str:
    parts = path.relative_to(ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def library_imports() -> dict[str, set[str]]:
    """Each gistnet/ module -> the gistnet/ modules it imports, at the top or inside a
    function alike (a lazy import is still a dependency)."""
    paths = {_module_name(p): p for p in sorted((ROOT / "gistnet").rglob("*.py"))}
    graph: dict[str, set[str]] = {}
    for name, path in paths.items():
        package = name if path.name == "__init__.py" else name.rpartition(".")[0]
        targets: set[str] = set()
        for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
            if isinstance(node, ast.Import):
                targets.update(alias.name for alias in node.names)
            elif isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:
                    anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                    base = ".".join([*anchor, *([base] if base else [])])
                targets.add(base)
                # `from gistnet import errors` imports the module gistnet.errors
                targets.update(f"{base}.{alias.name}" for alias in node.names)
        graph[name] = {t for t in targets if t in paths and t != name}
    return graph


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One import cycle as [a, b, ..., a], or None."""
    state: dict[str, str] = {}  # "open" while on the path, "done" once fully explored
    path: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = "open"
        path.append(node)
        for target in sorted(graph[node]):
            if state.get(target) == "open":
                return [*path[path.index(target) :], target]
            if target not in state and (cycle := visit(target)):
                return cycle
        path.pop()
        state[node] = "done"
        return None

    for node in sorted(graph):
        if node not in state and (cycle := visit(node)):
            return cycle
    return None


def test_find_cycle_sees_a_cycle_and_a_clean_graph():
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b", "c"}, "b": {"c"}, "c": set()}) is None


def test_no_library_module_imports_one_that_imports_it_back():
    graph = library_imports()
    assert "gistnet.distributed" in graph["gistnet.train"]  # the graph sees real imports
    cycle = find_cycle(graph)
    assert cycle is None, f"gistnet/ has an import cycle: {' -> '.join(cycle)}"
