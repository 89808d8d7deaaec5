"""No import cycles between the modules of the gogooku3 package.

The graph is read from the source with `ast`: every `import` / `from ... import` of a gogooku3 module, at module
level or inside a function (a deferred import is still a cycle, only hidden), except those under
`if TYPE_CHECKING:` (never run). `from pkg import name` points at the submodule `pkg.name` where one exists, else at
`pkg` itself. The package has no cycle.
"""

from __future__ import annotations

import ast
from pathlib import Path

import gogooku3

ROOT = Path(gogooku3.__file__).resolve().parent
PACKAGE = "gogooku3"


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT.parent).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def _modules() -> dict[str, Path]:
    return {_module_name(p): p for p in sorted(ROOT.rglob("*.py"))}


def _type_checking(test: ast.expr) -> bool:
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"
    )


def _imports(tree: ast.AST) -> list[ast.Import | ast.ImportFrom]:
    """Every import statement of the module, nested ones included, less those under `if TYPE_CHECKING:`."""
    out: list[ast.Import | ast.ImportFrom] = []

    def visit(node: ast.AST) -> None:
        if isinstance(node, (ast.Import, ast.ImportFrom)):
            out.append(node)
        if isinstance(node, ast.If) and _type_checking(node.test):
            for child in node.orelse:
                visit(child)
            return
        for child in ast.iter_child_nodes(node):
            visit(child)

    visit(tree)
    return out


def import_graph() -> dict[str, set[str]]:
    """{module: the gogooku3 modules it imports}."""
    mods = _modules()
    graph: dict[str, set[str]] = {m: set() for m in mods}
    for mod, path in mods.items():
        is_pkg = path.name == "__init__.py"
        for node in _imports(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.Import):
                targets = [a.name for a in node.names]
            else:
                base = node.module or ""
                if node.level:
                    anchor = mod.split(".") if is_pkg else mod.split(".")[:-1]
                    anchor = anchor[: len(anchor) - (node.level - 1)]
                    base = ".".join([*anchor, *([base] if base else [])])
                targets = [f"{base}.{a.name}" if f"{base}.{a.name}" in mods else base for a in node.names]
            for t in targets:
                while t and t not in mods and "." in t:  # `import pkg.mod.attr` or a name inside a module
                    t = t.rsplit(".", 1)[0]
                if t in mods and t != mod and (t == PACKAGE or t.startswith(PACKAGE + ".")):
                    graph[mod].add(t)
    return graph


def _canonical(cycle: list[str]) -> tuple[str, ...]:
    i = cycle.index(min(cycle))
    return tuple(cycle[i:] + cycle[:i])


def cycles(graph: dict[str, set[str]]) -> set[tuple[str, ...]]:
    """Every elementary cycle (each found once, from its alphabetically first module)."""
    found: set[tuple[str, ...]] = set()
    order = sorted(graph)
    for start in order:
        # only paths through modules after `start`: each cycle is found from its smallest module alone
        stack = [(start, iter(sorted(graph[start])))]
        path, on_path = [start], {start}
        while stack:
            _, it = stack[-1]
            nxt = next(it, None)
            if nxt is None:
                stack.pop()
                on_path.discard(path.pop())
                continue
            if nxt == start:
                found.add(_canonical(list(path)))
            elif nxt > start and nxt not in on_path:
                stack.append((nxt, iter(sorted(graph[nxt]))))
                path.append(nxt)
                on_path.add(nxt)
    return found


def test_the_graph_is_read():
    g = import_graph()
    assert "gogooku3.features.common" in g["gogooku3.features.price"]
    assert "gogooku3.features.build" in g["gogooku3.features.incremental"]
    assert cycles({"a": {"b"}, "b": {"c", "a"}, "c": {"a"}}) == {("a", "b"), ("a", "b", "c")}


def test_no_import_cycle():
    found = sorted(cycles(import_graph()))
    assert not found, "import cycle(s): " + "; ".join(" -> ".join([*c, c[0]]) for c in found)
