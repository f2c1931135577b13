"""The import graph of ``pulmo`` has no cycles, between modules or between packages (DESIGN.md: dependencies point
down the list io/metrics -> models -> tasks -> pipeline -> report -> cli/service).

Every ``import`` statement of ``src/pulmo`` counts, at module level and inside functions (a lazy import still is a
dependency); imports under ``if TYPE_CHECKING:`` do not. ``importlib.import_module`` with a computed name (the task
registry) is not a static edge and is not counted.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

SRC = Path(__file__).resolve().parents[1] / "src"


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(SRC).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _type_checking_nodes(tree: ast.AST) -> set[int]:
    skip = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
            skip |= {id(n) for stmt in node.body for n in ast.walk(stmt)}
    return skip


def import_graph() -> dict[str, set[str]]:
    """``{module: {pulmo modules it imports}}`` over every module of ``src/pulmo``."""
    files = {(_module_name(p)): p for p in (SRC / "pulmo").rglob("*.py")}
    graph: dict[str, set[str]] = {}
    for name, path in files.items():
        tree = ast.parse(path.read_text(), str(path))
        skip = _type_checking_nodes(tree)
        package = name if path.name == "__init__.py" else name.rpartition(".")[0]
        deps = set()
        for node in ast.walk(tree):
            if id(node) in skip:
                continue
            if isinstance(node, ast.Import):
                targets = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:
                    base = ".".join(package.split(".")[:len(package.split(".")) - node.level + 1] + ([base] if base else []))
                # "from pulmo.x import y": y is a submodule or a name of pulmo.x
                targets = [f"{base}.{a.name}" if f"{base}.{a.name}" in files else base for a in node.names]
            else:
                continue
            for t in targets:
                while t and t not in files:  # "import pulmo.a.b" of a name: the deepest module that exists
                    t = t.rpartition(".")[0]
                if t.startswith("pulmo") and t != name:
                    deps.add(t)
        graph[name] = deps
    return graph


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components with more than one node (Tarjan), each sorted."""
    index, low, stack, on_stack, out = {}, {}, [], set(), []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in graph.get(v, ()):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                out.append(sorted(comp))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return out


def package_of(module: str) -> str:
    """``pulmo.tasks.nodule`` -> ``pulmo.tasks``; top-level modules (``pulmo.cli``, ``pulmo.errors``) are their own
    node; the package ``pulmo`` itself (its ``__init__``, the public API re-exports) is left out."""
    parts = module.split(".")
    return ".".join(parts[:2])


def test_graph_sees_known_edges():
    graph = import_graph()
    assert "pulmo.errors" in graph["pulmo.tasks.base"]
    assert "pulmo.tasks.base" in graph["pulmo.tasks.registry"]
    assert "pulmo.io" in graph["pulmo.tasks.lung_seg"]


def test_cycles_finds_a_cycle():
    assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]
    assert cycles({"a": {"b"}, "b": set()}) == []


def test_no_module_import_cycles():
    found = cycles(import_graph())
    assert not found, f"import cycles between modules: {found}"


@pytest.mark.parametrize("exclude_root", [True])
def test_no_package_import_cycles(exclude_root):
    graph: dict[str, set[str]] = {}
    for module, deps in import_graph().items():
        if module == "pulmo":
            continue
        src = package_of(module)
        graph.setdefault(src, set()).update(package_of(d) for d in deps if d != "pulmo" and package_of(d) != src)
    found = cycles(graph)
    assert not found, f"import cycles between packages: {found}"
