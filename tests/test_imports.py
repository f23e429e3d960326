"""The package's import graph: no circle, and the pure-torch floor imports nothing above it.

Every ``import``/``from`` statement naming ``lit_unlearn`` counts, at module level and inside functions
alike: a lazy import postpones a dependency, it does not remove it, and a circle closed by one is still a
circle a reader must untangle (and a ``quantization`` module that imports ``deployment`` inside a function
still needs it). Statements under ``if TYPE_CHECKING:`` count too. Each edge goes to the most specific
module named: ``from lit_unlearn.deployment import layers`` is an edge to ``lit_unlearn.deployment.layers``,
``from lit_unlearn.deployment import Deployment`` one to ``lit_unlearn.deployment`` (its ``__init__``). The
package ``__init__`` that Python runs before a submodule is not an edge of its own, or every package that
re-exports its submodules would be a circle.

Run as a script (``python tests/test_imports.py``) to print the circles and the back-arrows.
"""

from __future__ import annotations

import ast
import sys
from pathlib import Path

SRC = Path(__file__).resolve().parents[1] / "src"
ROOT = "lit_unlearn"
#: The pure-torch floor: its modules import only each other (and torch).
FLOOR = f"{ROOT}.quantization"


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(SRC).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def modules() -> dict[str, Path]:
    """Every module of the package, by dotted name."""
    return {_module_name(p): p for p in sorted((SRC / ROOT).rglob("*.py"))}


def _resolve(importer: str, is_package: bool, level: int, module: str | None) -> str:
    """The absolute name of a relative ``from`` import's module."""
    if level == 0:
        return module or ""
    base = importer.split(".") if is_package else importer.split(".")[:-1]
    base = base[: len(base) - (level - 1)]
    return ".".join([*base, module] if module else base)


def imports_of(name: str, path: Path, known: set[str]) -> set[str]:
    """The package modules ``name`` imports (see the module docstring for what counts)."""
    tree = ast.parse(path.read_text(), filename=str(path))
    out: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            targets = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = _resolve(name, path.name == "__init__.py", node.level, node.module)
            # ``from pkg import sub`` names the submodule; ``from pkg import attr`` the package.
            targets = [f"{base}.{a.name}" if f"{base}.{a.name}" in known else base for a in node.names]
        else:
            continue
        for target in targets:
            if target != ROOT and not target.startswith(f"{ROOT}."):
                continue
            # ``import lit_unlearn.a.b.c`` where ``c`` is an attribute: the longest known prefix.
            while target not in known and "." in target:
                target = target.rsplit(".", 1)[0]
            if target != name:
                out.add(target)
    return out


def import_graph() -> dict[str, set[str]]:
    """``importer -> {imported}`` over every module of the package."""
    mods = modules()
    known = set(mods)
    return {name: imports_of(name, path, known) for name, path in mods.items()}


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components with more than one module (Tarjan), each sorted."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in sorted(graph.get(v, ())):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    sys.setrecursionlimit(max(sys.getrecursionlimit(), 10 * len(graph)))
    for v in sorted(graph):
        if v not in index:
            visit(v)
    return found


def one_circle(graph: dict[str, set[str]], component: list[str]) -> list[str]:
    """One closed path through ``component``, ``a -> b -> ... -> a`` (shortest from its first module)."""
    members = set(component)
    start = component[0]
    parents: dict[str, str] = {}
    frontier = [start]
    while frontier:
        nxt = []
        for v in frontier:
            for w in sorted(graph[v] & members):
                if w == start:
                    path = [v]
                    while path[-1] != start:
                        path.append(parents[path[-1]])
                    return [start, *reversed(path[:-1]), start] if v != start else [start, start]
                if w not in parents:
                    parents[w] = v
                    nxt.append(w)
        frontier = nxt
    raise AssertionError(f"{component} is not strongly connected")


def back_arrows(graph: dict[str, set[str]]) -> list[tuple[str, str]]:
    """Imports from the floor (:data:`FLOOR`) to a package module outside it."""
    inside = (FLOOR, f"{FLOOR}.")
    return sorted(
        (a, b) for a, targets in graph.items() if a.startswith(inside) for b in targets if not b.startswith(inside)
    )


def report() -> str:
    graph = import_graph()
    lines = [f"{len(graph)} modules, {sum(map(len, graph.values()))} imports"]
    found = cycles(graph)
    lines.append(f"circles: {len(found)}")
    for component in found:
        lines.append(f"  {len(component)} modules: {', '.join(component)}")
        lines.append(f"    e.g. {' -> '.join(one_circle(graph, component))}")
    arrows = back_arrows(graph)
    lines.append(f"back-arrows out of {FLOOR}: {len(arrows)}")
    lines.extend(f"  {a} -> {b}" for a, b in arrows)
    return "\n".join(lines)


def test_walker_sees_the_package():
    graph = import_graph()
    assert f"{FLOOR}.schemes" in graph[f"{FLOOR}.functional"]
    assert f"{ROOT}.deployment.layers" in graph[f"{ROOT}.deployment"]
    assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]
    assert one_circle({"a": {"b"}, "b": {"a"}}, ["a", "b"]) == ["a", "b", "a"]


def test_no_import_circle():
    graph = import_graph()
    found = cycles(graph)
    assert not found, "import circles:\n" + "\n".join(" -> ".join(one_circle(graph, c)) for c in found)


def test_quantization_imports_nothing_above_it():
    arrows = back_arrows(import_graph())
    assert not arrows, f"{FLOOR} imports modules above it:\n" + "\n".join(f"{a} -> {b}" for a, b in arrows)


if __name__ == "__main__":
    print(report())
