"""The package's import graph: layered, acyclic, and no import hidden in a function to dodge a
cycle (issue "Core v2"). Read from the source with ``ast``; nothing is imported."""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1] / "src" / "pqorder"
# The bottom layer: pure data and types, importing nothing of the package above it.
BOTTOM = {
    "pqorder.errors",
    "pqorder.bitpack",
    "pqorder.hardware",
    "pqorder.quantgrid",
    "pqorder.state",
    "pqorder.core",
}


def _module(path: Path) -> str:
    parts = path.relative_to(ROOT.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _resolve(name: str, modules: set[str]) -> str:
    """The package module an import names (``from pqorder.x import y`` may name module x.y)."""
    while name not in modules and "." in name:
        name = name.rpartition(".")[0]
    return name


def _imports(tree: ast.Module, modules: set[str]) -> tuple[set[str], set[str]]:
    """(module-level, function-level) pqorder imports; TYPE_CHECKING blocks are skipped."""
    top: set[str] = set()
    lazy: set[str] = set()

    def visit(node: ast.AST, in_function: bool) -> None:
        for child in ast.iter_child_nodes(node):
            if isinstance(child, ast.If) and "TYPE_CHECKING" in ast.unparse(child.test):
                continue
            names: list[str] = []
            if isinstance(child, ast.Import):
                names = [a.name for a in child.names]
            elif isinstance(child, ast.ImportFrom) and child.module and child.level == 0:
                names = [f"{child.module}.{a.name}" for a in child.names]
            for name in names:
                if name.startswith("pqorder"):
                    (lazy if in_function else top).add(_resolve(name, modules))
            inner = in_function or isinstance(child, ast.FunctionDef | ast.AsyncFunctionDef)
            visit(child, inner)

    visit(tree, False)
    return top, lazy


def _graph() -> dict[str, tuple[set[str], set[str]]]:
    files = {_module(p): p for p in ROOT.rglob("*.py")}
    modules = set(files)
    return {m: _imports(ast.parse(p.read_text()), modules) for m, p in files.items()}


def _reaches(graph: dict[str, set[str]], start: str, goal: str) -> bool:
    seen, todo = set(), [start]
    while todo:
        node = todo.pop()
        if node == goal:
            return True
        if node not in seen:
            seen.add(node)
            todo.extend(graph.get(node, ()))
    return False


def _with_parents(graph: dict[str, set[str]]) -> dict[str, set[str]]:
    """Importing ``pqorder.a.b`` runs ``pqorder/a/__init__`` first (which may import more):
    add that edge, except to the importer's own packages (already running when it loads)."""
    out = {}
    for module, deps in graph.items():
        edges = set(deps)
        for dep in deps:
            parts = dep.split(".")
            for i in range(2, len(parts)):
                package = ".".join(parts[:i])
                if not module.startswith(f"{package}."):
                    edges.add(package)
        out[module] = edges
    return out


def test_bottom_layer_imports_only_the_bottom_layer():
    graph = _graph()
    for module in BOTTOM:
        upward = graph[module][0] - BOTTOM - {"pqorder"}
        assert not upward, f"{module} imports {sorted(upward)} from above the bottom layer"


def test_module_level_imports_are_acyclic():
    graph = _with_parents({m: top for m, (top, _lazy) in _graph().items()})
    for module, deps in graph.items():
        for dep in deps:
            if dep != module:
                assert not _reaches(graph, dep, module), f"import cycle: {module} ⇄ {dep}"


def test_no_function_level_import_dodges_a_cycle():
    """Every import written inside a function could move to the top without a cycle (the CLI
    imports lazily only to start fast)."""
    full = _graph()
    graph = _with_parents({m: top for m, (top, _lazy) in full.items()})
    for module, (_top, lazy) in full.items():
        for dep in lazy:
            assert not _reaches(graph, dep, module), (
                f"{module} imports {dep} inside a function, and {dep} imports {module}"
            )
