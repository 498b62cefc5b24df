"""No import cycles inside prunekit, and no import of a higher layer (docs/architecture.md).

Every import counts: at module level, inside functions (a run-time import hides a cycle, it does
not remove it) and under ``TYPE_CHECKING``. ``KNOWN_CYCLES`` is empty; a cycle that must stay a
while is listed there with its reason, and the test fails both on a new cycle and on a listed
one that is gone (so the list only shrinks).
"""
from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).parents[1] / "prunekit"
KNOWN_CYCLES: list[set[str]] = []


def module_name(path: Path) -> str:
    parts = path.relative_to(ROOT.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imported_modules(path: Path, modules: set[str]) -> set[str]:
    """The prunekit modules ``path`` imports, anywhere in the file."""
    name = module_name(path)
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            targets = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")
                anchor = anchor[:len(anchor) - (node.level - 1)]
                base = ".".join(anchor + ([base] if base else []))
            # `from . import contract` imports a module; `from .api import resolve` a name
            targets = [f"{base}.{alias.name}" for alias in node.names]
            if node.module:
                targets.append(base)
        else:
            continue
        found |= {t for t in targets if t in modules}
    return found - {name}


def import_graph() -> dict[str, set[str]]:
    paths = {module_name(p): p for p in ROOT.rglob("*.py")}
    return {name: imported_modules(path, set(paths)) for name, path in paths.items()}


def cycles(graph: dict[str, set[str]]) -> list[set[str]]:
    """The strongly connected components of more than one module (Tarjan)."""
    index, low, stack, on_stack, found = {}, {}, [], set(), []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for other in graph[node]:
            if other not in index:
                visit(other)
                low[node] = min(low[node], low[other])
            elif other in on_stack:
                low[node] = min(low[node], index[other])
        if low[node] == index[node]:
            component = set()
            while True:
                member = stack.pop()
                on_stack.discard(member)
                component.add(member)
                if member == node:
                    break
            if len(component) > 1:
                found.append(component)

    for node in sorted(graph):
        if node not in index:
            visit(node)
    return found


def test_the_cycle_finder_sees_a_cycle_through_a_function_level_import():
    graph = {"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}
    assert cycles(graph) == [{"a", "b", "c"}]
    assert cycles({"a": {"b"}, "b": set()}) == []


def test_no_import_cycles_beyond_the_known_ones():
    found = cycles(import_graph())
    new = [sorted(c) for c in found if c not in KNOWN_CYCLES]
    gone = [sorted(c) for c in KNOWN_CYCLES if c not in found]
    assert not new, f"import cycles not in KNOWN_CYCLES: {new}"
    assert not gone, f"cycles gone (or changed): remove them from KNOWN_CYCLES: {gone}"


# The layers of docs/architecture.md, bottom first: a module imports its own layer or lower ones.
LAYERS = [
    {"errors", "files", "timing", "imports", "_version", "hookspecs"},
    {"tasks", "data", "ops", "plots"},
    {"core", "models", "interfaces"},
    {"training", "registry", "api"},
    {"pipeline"},
    {"analysis", "export", "testing"},
    {"cli", "__init__", "__main__"},
]


def layer_of(module: str) -> int:
    """The layer of ``prunekit.X...`` by X (``prunekit`` itself is ``__init__``)."""
    part = module.split(".")[1] if "." in module else "__init__"
    for number, members in enumerate(LAYERS):
        if part in members:
            return number
    raise AssertionError(f"{module} is in no layer of LAYERS: add its package to one")


def upward_imports(graph: dict[str, set[str]]) -> list[str]:
    return sorted(f"{module} -> {target}" for module, targets in graph.items()
                  for target in targets if layer_of(target) > layer_of(module))


def test_the_layer_check_refuses_an_upward_import():
    assert upward_imports({"prunekit.core.masks": {"prunekit.pipeline.engine"}}) == [
        "prunekit.core.masks -> prunekit.pipeline.engine"]
    assert upward_imports({"prunekit.cli.runs": {"prunekit", "prunekit.core.masks"}}) == []


def test_packages_import_only_their_own_layer_or_lower_ones():
    upward = upward_imports(import_graph())
    assert not upward, f"imports of a higher layer (docs/architecture.md): {upward}"
