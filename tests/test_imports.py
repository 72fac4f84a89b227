"""The package's import graph: no cycles, and the core never imports a plug-in (the zoo, the SmolLM2 family).

Every module of `evomerge/` is parsed with `ast` (nothing is imported), and each `import` / `from ... import`
of an evomerge module becomes an edge. Imports under `if TYPE_CHECKING:` are not edges (they never run). A
module's import of its own enclosing package is not an edge either: Python has that package initialized
before the module runs.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parent.parent / "evomerge"
#: The built-in plug-ins, and the application layer, the only other modules that may import them.
PLUGINS = ("evomerge.zoo", "evomerge.smollm2")
APPLICATION = ("evomerge.cli", "evomerge.demo")


def module_files() -> dict[str, Path]:
    """Every module of the package by dotted name (a package by its `__init__.py`)."""
    modules = {}
    for path in sorted(PACKAGE.rglob("*.py")):
        parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
        modules[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    return modules


def _is_type_checking(node: ast.If) -> bool:
    test = node.test
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"
    )


def _import_nodes(node: ast.AST, module_level_only: bool):
    """The imports that run: all but those under TYPE_CHECKING and, if asked, those inside functions."""
    for child in ast.iter_child_nodes(node):
        if isinstance(child, (ast.Import, ast.ImportFrom)):
            yield child
        elif isinstance(child, ast.If) and _is_type_checking(child):
            yield from (n for stmt in child.orelse for n in _import_nodes(stmt, module_level_only))
        elif module_level_only and isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda)):
            continue
        else:
            yield from _import_nodes(child, module_level_only)


def imported_modules(name: str, path: Path, modules: dict[str, Path], module_level_only: bool) -> set[str]:
    """The evomerge modules that module `name` imports (with the packages above them that it enters)."""
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    targets = set()
    for node in _import_nodes(ast.parse(path.read_text(encoding="utf-8")), module_level_only):
        if isinstance(node, ast.Import):
            targets.update(alias.name for alias in node.names)
            continue
        base = node.module or ""
        if node.level:
            anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
            base = ".".join([*anchor, *([base] if base else [])])
        targets.add(base)
        targets.update(f"{base}.{alias.name}" for alias in node.names if f"{base}.{alias.name}" in modules)
    entered = set()
    for target in targets:
        parts = target.split(".")
        entered.update(".".join(parts[:i]) for i in range(1, len(parts) + 1))
    enclosing = {".".join(name.split(".")[:i]) for i in range(1, name.count(".") + 1)}
    return {t for t in entered if t in modules and t != name and t not in enclosing}


def import_graph(module_level_only: bool) -> dict[str, set[str]]:
    modules = module_files()
    return {name: imported_modules(name, path, modules, module_level_only) for name, path in modules.items()}


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One cycle of the graph as a path whose last module imports the first, or None."""
    state: dict[str, str] = {}  # "open" while on the DFS stack, "done" after
    stack: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = "open"
        stack.append(node)
        for target in sorted(graph[node]):
            if state.get(target) == "open":
                return stack[stack.index(target) :]
            if target not in state and (cycle := visit(target)) is not None:
                return cycle
        stack.pop()
        state[node] = "done"
        return None

    for node in sorted(graph):
        if node not in state and (cycle := visit(node)) is not None:
            return cycle
    return None


def test_the_graph_sees_real_edges() -> None:
    graph = import_graph(module_level_only=False)
    assert "evomerge.sources" in graph["evomerge.merge.engine"]
    assert "evomerge.merge.methods.registry" in graph["evomerge.merge.methods"]
    assert "evomerge.zoo.build" in graph["evomerge.demo"]  # imported in a function


def test_find_cycle_names_the_modules_of_a_cycle() -> None:
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == ["a", "b", "c"]
    assert find_cycle({"a": {"b"}, "b": set()}) is None


def test_no_import_cycle_at_module_level() -> None:
    cycle = find_cycle(import_graph(module_level_only=True))
    assert cycle is None, "import cycle: " + " -> ".join([*cycle, cycle[0]])


def test_no_import_cycle_counting_imports_inside_functions() -> None:
    cycle = find_cycle(import_graph(module_level_only=False))
    assert cycle is None, "import cycle: " + " -> ".join([*cycle, cycle[0]])


@pytest.mark.parametrize("plugin", PLUGINS)
def test_the_core_never_imports_a_plug_in(plugin: str) -> None:
    """A plug-in is reached only through the reference schemes it registers: no module outside it but the
    application layer imports it."""
    importers = sorted(
        name
        for name, targets in import_graph(module_level_only=False).items()
        if not name.startswith((plugin, *APPLICATION)) and any(t.startswith(plugin) for t in targets)
    )
    assert importers == []
