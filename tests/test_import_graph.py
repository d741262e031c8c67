"""The import graph of engine/ and ui/ has no cycle, and engine/ never imports ui, pages or streamlit.

Read from the source (AST), so it sees every import whether it runs at import time or inside a function:
a lazy import that closes a loop is still a loop, it only fails later. `import a.b.c` and
`from a.b import c` (when `a.b.c` is a module) count as one edge to the module `a.b.c`, not to its parent
packages. Imports under `if TYPE_CHECKING:` never run and are left out.

Run as a script (`python tests/test_import_graph.py`) to print every cycle.
"""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("engine", "ui")
FORBIDDEN_IN_ENGINE = ("ui", "pages", "streamlit")


def module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def source_modules() -> dict[str, Path]:
    return {
        module_name(path): path
        for package in PACKAGES
        for path in sorted((ROOT / package).rglob("*.py"))
        if "__pycache__" not in path.parts
    }


def _is_type_checking(node: ast.If) -> bool:
    test = node.test
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"
    )


def _import_nodes(tree: ast.AST):
    """Every Import / ImportFrom node, at any depth, skipping `if TYPE_CHECKING:` bodies."""
    stack = [tree]
    while stack:
        node = stack.pop()
        if isinstance(node, ast.Import | ast.ImportFrom):
            yield node
        if isinstance(node, ast.If) and _is_type_checking(node):
            stack.extend(node.orelse)
            continue
        stack.extend(ast.iter_child_nodes(node))


def imported_names(name: str, path: Path) -> set[tuple[str, str]]:
    """What this module imports, as (module, module.name) pairs.

    `import a.b.c` gives ("a.b.c", "a.b.c"); `from a.b import c` gives ("a.b", "a.b.c"): an edge to
    `a.b.c` when that is a module, else to `a.b` (c is a name defined there).
    """
    is_package = path.name == "__init__.py"
    names: set[tuple[str, str]] = set()
    for node in _import_nodes(ast.parse(path.read_text(), filename=str(path))):
        if isinstance(node, ast.Import):
            names.update((alias.name, alias.name) for alias in node.names)
            continue
        base = node.module or ""
        if node.level:  # relative: resolve against this module's package
            package = name.split(".") if is_package else name.split(".")[:-1]
            package = package[: len(package) - (node.level - 1)]
            base = ".".join(package + ([base] if base else []))
        names.update((base, f"{base}.{alias.name}" if alias.name != "*" else base) for alias in node.names)
    return names


def import_graph() -> tuple[dict[str, set[str]], dict[str, set[str]]]:
    """(edges between engine/ui modules, every module name each module imports)."""
    modules = source_modules()
    pairs = {name: imported_names(name, path) for name, path in modules.items()}
    edges = {
        name: {full if full in modules else base for base, full in imported} & modules.keys() - {name}
        for name, imported in pairs.items()
    }
    raw = {name: {base for base, _ in imported} for name, imported in pairs.items()}
    return edges, raw


def cycles(edges: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan), each sorted."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    on_stack: set[str] = set()
    stack: list[str] = []
    found: list[list[str]] = []
    counter = 0

    def visit(node: str) -> None:
        nonlocal counter
        index[node] = low[node] = counter
        counter += 1
        stack.append(node)
        on_stack.add(node)
        for target in sorted(edges.get(node, ())):
            if target not in index:
                visit(target)
                low[node] = min(low[node], low[target])
            elif target in on_stack:
                low[node] = min(low[node], index[target])
        if low[node] == index[node]:
            component = []
            while True:
                member = stack.pop()
                on_stack.discard(member)
                component.append(member)
                if member == node:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for node in sorted(edges):
        if node not in index:
            visit(node)
    return sorted(found)


def describe_cycle(component: list[str], edges: dict[str, set[str]]) -> str:
    members = set(component)
    links = [f"{a} -> {b}" for a in component for b in sorted(edges[a] & members)]
    return "; ".join(links)


def test_no_import_cycle_in_engine_and_ui():
    edges, _ = import_graph()
    assert len(edges) > 50, "the graph is missing modules"
    found = cycles(edges)
    assert found == [], "import cycles:\n" + "\n".join(describe_cycle(c, edges) for c in found)


def test_engine_never_imports_ui_pages_or_streamlit():
    _, raw = import_graph()
    offenders = sorted(
        f"{name} imports {target}"
        for name, imported in raw.items()
        if name.split(".")[0] == "engine"
        for target in imported
        if target.split(".")[0] in FORBIDDEN_IN_ENGINE
    )
    assert offenders == []


def test_the_checker_sees_lazy_imports_and_cycles(tmp_path):
    path = tmp_path / "m.py"
    path.write_text(
        "from typing import TYPE_CHECKING\n"
        "if TYPE_CHECKING:\n    import engine.never\n"
        "def f():\n    from engine.sizing import estimate\n    import ui.cache.registry\n"
    )
    imported = {full for _, full in imported_names("engine.x", path)}
    assert imported >= {"engine.sizing.estimate", "ui.cache.registry"}
    assert "engine.never" not in imported
    assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]


if __name__ == "__main__":
    graph, _ = import_graph()
    for component in cycles(graph):
        print("cycle:", describe_cycle(component, graph))
    print(f"{len(graph)} modules, {sum(map(len, graph.values()))} edges")
