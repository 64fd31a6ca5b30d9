"""The source tree keeps the shape docs/design.md ("Modules") gives it.

Data flows one way through the layers, so no module imports one that
imports it back, and no module reaches into another's underscored names:
each can be read, and changed, without reading the ones that use it.
"""

from __future__ import annotations

import ast
from collections.abc import Iterator
from pathlib import Path

import shmstore

SOURCE = Path(shmstore.__file__).resolve().parent


def _module_name(path: Path) -> str:
    parts = path.relative_to(SOURCE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


MODULES = {_module_name(p): p for p in sorted(SOURCE.rglob("*.py"))}
TREES = {name: ast.parse(path.read_text(encoding="utf-8")) for name, path in MODULES.items()}


def _resolve(module: str, node: ast.ImportFrom) -> str:
    """The absolute name of what *node* (in *module*) imports from."""
    if not node.level:
        return node.module or ""
    package = module if MODULES[module].name == "__init__.py" else module.rpartition(".")[0]
    for _ in range(node.level - 1):
        package = package.rpartition(".")[0]
    return f"{package}.{node.module}" if node.module else package


def _imports(module: str) -> Iterator[tuple[str, ast.ImportFrom | ast.Import]]:
    """Every shmstore module *module* imports (at any depth, TYPE_CHECKING included)."""
    for node in ast.walk(TREES[module]):
        if isinstance(node, ast.ImportFrom):
            base = _resolve(module, node)
            for alias in node.names:
                full = f"{base}.{alias.name}"
                if full in MODULES:
                    yield full, node
                elif base in MODULES:
                    yield base, node
        elif isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name in MODULES:
                    yield alias.name, node


GRAPH = {m: {target for target, _ in _imports(m) if target != m} for m in MODULES}


def _defined_names(tree: ast.Module) -> set[str]:
    """Underscored names a module defines: functions, classes, attributes it assigns."""
    names: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            names.add(node.name)
        elif isinstance(node, ast.Name) and isinstance(node.ctx, ast.Store):
            names.add(node.id)
        elif isinstance(node, ast.Attribute) and isinstance(node.ctx, ast.Store):
            names.add(node.attr)
        elif isinstance(node, ast.arg):
            names.add(node.arg)
    return {n for n in names if n.startswith("_") and not n.startswith("__")}


DEFINED = {m: _defined_names(tree) for m, tree in TREES.items()}


def test_no_module_imports_one_that_imports_it_back() -> None:
    cycles = []
    for start in GRAPH:
        stack = [(start, [start])]
        seen = set()
        while stack:
            node, path = stack.pop()
            for nxt in GRAPH[node]:
                if nxt == start:
                    cycles.append(" -> ".join([*path, start]))
                elif nxt not in seen:
                    seen.add(nxt)
                    stack.append((nxt, [*path, nxt]))
    assert not cycles, "import cycles:\n" + "\n".join(sorted(set(cycles)))


def test_no_module_imports_an_underscored_name_of_another() -> None:
    found = [
        f"{module}:{node.lineno} imports {alias.name} from {target}"
        for module in MODULES
        for target, node in _imports(module)
        if isinstance(node, ast.ImportFrom)
        for alias in node.names
        if alias.name.startswith("_")
        and not alias.name.startswith("__")
        and f"{_resolve(module, node)}.{alias.name}" not in MODULES
    ]
    assert not found, "\n".join(found)


def test_no_module_uses_an_underscored_attribute_another_module_defines() -> None:
    elsewhere = {m: set().union(*(d for o, d in DEFINED.items() if o != m)) for m in MODULES}
    found = [
        f"{module}:{node.lineno} uses {ast.unparse(node)}"
        for module, tree in TREES.items()
        for node in ast.walk(tree)
        if isinstance(node, ast.Attribute)
        and node.attr.startswith("_")
        and not node.attr.startswith("__")
        and node.attr not in DEFINED[module]
        and node.attr in elsewhere[module]
    ]
    assert not found, "\n".join(found)


def test_the_walk_sees_the_package_and_its_modules() -> None:
    # The checks above are only as good as the walk: it must find the modules
    # and the imports between them (``__init__`` imports the store's front).
    assert "shmstore._store" in GRAPH["shmstore"]
    assert all(tree.body for tree in TREES.values())
