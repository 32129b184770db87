"""The layering of the package, read from the source with ``ast`` (nothing is imported):

- nothing below the command line imports ``vitscope.cli``, at module level or inside a function;
- no import circle between files;
- ``vitscope.data`` and ``vitscope.models`` do not import each other (images -> data -> models: ``models`` may read
  ``data``, never the other way round).

Every import counts, the ones inside functions too. Commands import their heavy modules inside the function so that
``vitscope --help`` stays fast; such a lazy import still counts here, because a lazy import that closes a circle only
moves the failure (or the half-initialised module) to the first call. Only ``if TYPE_CHECKING:`` blocks are skipped.

An import of ``a.b.c`` is an edge to the module ``a.b.c`` (``from a.b import c`` too, when ``c`` is a module;
``from a.b import name`` is an edge to ``a.b``). Python runs the parent package's ``__init__`` first, but a package
whose ``__init__`` re-exports its own modules is not a circle, so that implicit edge is not drawn.
"""
from __future__ import annotations

import ast
from pathlib import Path

import pytest

SRC = Path(__file__).resolve().parents[2] / "src"
PKG = SRC / "vitscope"
BELOW_CLI = ("analysis", "features", "data", "models", "experiments", "report", "app")


def _modules() -> dict[str, tuple[Path, bool]]:
    out = {}
    for p in sorted(PKG.rglob("*.py")):
        parts = list(p.relative_to(SRC).with_suffix("").parts)
        is_pkg = parts[-1] == "__init__"
        if is_pkg:
            parts = parts[:-1]
        out[".".join(parts)] = (p, is_pkg)
    return out


MODULES = _modules()


def _is_type_checking(node: ast.AST) -> bool:
    test = getattr(node, "test", None)
    return isinstance(node, ast.If) and (
        (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING")
        or (isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"))


def _nearest_module(name: str) -> str | None:
    while name and name not in MODULES:
        name = name.rpartition(".")[0]
    return name or None


def imports_of(module: str) -> list[tuple[str, int]]:
    """``(imported vitscope module, line)`` for every import in ``module``'s source, lazy ones included."""
    path, is_pkg = MODULES[module]
    tree = ast.parse(path.read_text(), str(path))
    found: list[tuple[str, int]] = []

    def visit(node: ast.AST) -> None:
        for child in ast.iter_child_nodes(node):
            if _is_type_checking(child):
                continue
            if isinstance(child, ast.Import):
                found.extend((a.name, child.lineno) for a in child.names)
            elif isinstance(child, ast.ImportFrom):
                if child.level:                                  # relative: from .x import y
                    base = module.split(".") if is_pkg else module.split(".")[:-1]
                    base = base[:len(base) - (child.level - 1)]
                    target = ".".join(base + ([child.module] if child.module else []))
                else:
                    target = child.module or ""
                for a in child.names:
                    sub = f"{target}.{a.name}"
                    found.append((sub if sub in MODULES else target, child.lineno))
            visit(child)

    visit(tree)
    out = []
    for name, line in found:
        if name == "vitscope" or name.startswith("vitscope."):
            target = _nearest_module(name)
            if target is not None and target != module:
                out.append((target, line))
    return out


GRAPH = {m: imports_of(m) for m in MODULES}


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan), each sorted."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    out: list[list[str]] = []
    counter = [0]

    def connect(v: str) -> None:                       # iterative would be longer; the graph is a few hundred nodes
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on_stack.add(v)
        for w in sorted(graph.get(v, ())):
            if w not in index:
                connect(w)
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
            connect(v)
    return out


def _path_in(comp: list[str], graph: dict[str, set[str]]) -> str:
    """One circle through the first module of a component, for the failure message."""
    start, members = comp[0], set(comp)
    prev = {start: None}
    queue = [start]
    while queue:
        v = queue.pop(0)
        for w in sorted(graph[v] & members):
            if w == start:                             # back at the start: walk the chain back from v
                chain = [v]
                while chain[-1] != start:
                    chain.append(prev[chain[-1]])
                return " -> ".join(reversed(chain)) + f" -> {start}"
            if w not in prev:
                prev[w] = v
                queue.append(w)
    return " <-> ".join(comp)


def test_the_circle_finder_on_a_small_graph():
    graph = {"a": {"b"}, "b": {"c"}, "c": {"a", "d"}, "d": set(), "e": {"d"}, "f": {"g"}, "g": {"f"}}
    assert _cycles(graph) == [["a", "b", "c"], ["f", "g"]]
    assert _path_in(["a", "b", "c"], graph) == "a -> b -> c -> a"
    assert _cycles({"a": {"b"}, "b": {"c"}, "c": set()}) == []


def test_the_graph_sees_module_level_lazy_and_submodule_imports():
    """The checks below are only as good as the graph: it must see an import at module level, one inside a
    function and ``from package import module`` as an edge to that module."""
    edges = {m: {t for t, _ in GRAPH[m]} for m in GRAPH}
    assert "vitscope.cli.main" in edges["vitscope.__main__"]                       # module level
    assert "vitscope.models.loading" in edges["vitscope.cli.models"]               # inside a function
    assert "vitscope.models.converters.official" in edges["vitscope.models.converters"]   # from pkg import module
    assert len(MODULES) > 100


@pytest.mark.parametrize("area", BELOW_CLI)
def test_nothing_below_the_command_line_imports_it(area):
    bad = sorted({f"{MODULES[m][0].relative_to(SRC)}:{line} imports {t}"
                  for m in GRAPH if m.startswith(f"vitscope.{area}.") or m == f"vitscope.{area}"
                  for t, line in GRAPH[m] if t == "vitscope.cli" or t.startswith("vitscope.cli.")})
    assert not bad, ("move what these use into vitscope.runtime, vitscope.features.access or the library module "
                     "it belongs to:\n" + "\n".join(bad))


def test_no_import_circles():
    graph = {m: {t for t, _ in GRAPH[m]} for m in GRAPH}
    cycles = _cycles(graph)
    assert not cycles, "import circles:\n" + "\n".join(f"{_path_in(c, graph)}   (circle of {len(c)}: {', '.join(c)})"
                                                      for c in cycles)


@pytest.mark.parametrize("low, high", [("data", "models"), ("models", "data")])
def test_data_and_models_do_not_import_each_other(low, high):
    """Preprocessing (``vitscope.preprocess``), hub access (``vitscope.hub``) and what ships inside the package
    (``vitscope.bundled``) sit below both."""
    bad = sorted({f"{MODULES[m][0].relative_to(SRC)}:{line} imports {t}"
                  for m in GRAPH if m.startswith(f"vitscope.{low}.") or m == f"vitscope.{low}"
                  for t, line in GRAPH[m] if t == f"vitscope.{high}" or t.startswith(f"vitscope.{high}.")})
    assert not bad, "\n".join(bad)
