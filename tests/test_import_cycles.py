"""No import cycle among the installable packages' modules.

Reads every module's source with ``ast`` (nothing is imported) and follows the imports that
run when the module loads: module-level ``import``/``from ... import``, relative ones
included, also inside module-level ``try``/``if``/``with``. Imports inside functions and
under ``if TYPE_CHECKING:`` run later or never, so they do not count.
"""

from __future__ import annotations

import ast
from collections.abc import Iterator
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent

PACKAGES: dict[str, str] = {
    "stead": "stead",
    "workflows": "stead.workflows",
    "activities": "stead.activities",
    "guardrails": "stead.guardrails",
    "agents": "stead.agents",
}
"""Package directory (relative to the repository) -> the name it is imported as. Change a
value when a directory is installed under another name. The four top-level folders are linked
into the package (``stead/workflows -> ../workflows``); ``rglob`` does not follow the links, so
each module is read once, under the name it is imported by."""


def _modules() -> dict[str, Path]:
    """Import name -> source file of every module of the packages above."""
    found: dict[str, Path] = {}
    for directory, name in PACKAGES.items():
        base = ROOT / directory
        for path in sorted(base.rglob("*.py")):
            parts = list(path.relative_to(base).with_suffix("").parts)
            if parts[-1] == "__init__":
                parts.pop()
            found[".".join([name, *parts])] = path
    return found


def _is_type_checking(test: ast.expr) -> bool:
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING")


def _load_time_imports(body: list[ast.stmt]) -> Iterator[ast.Import | ast.ImportFrom]:
    """The import statements that run when a module body runs (not in functions or classes'
    methods, not under ``if TYPE_CHECKING:``)."""
    for node in body:
        if isinstance(node, ast.Import | ast.ImportFrom):
            yield node
        elif isinstance(node, ast.If):
            if not _is_type_checking(node.test):
                yield from _load_time_imports(node.body)
            yield from _load_time_imports(node.orelse)
        elif isinstance(node, ast.Try):
            for block in (node.body, node.orelse, node.finalbody,
                          *(h.body for h in node.handlers)):
                yield from _load_time_imports(block)
        elif isinstance(node, ast.With | ast.ClassDef):
            yield from _load_time_imports(node.body)


def _imports(module: str, path: Path, known: dict[str, Path]) -> set[str]:
    """The modules of ``known`` that ``module`` imports while it loads."""
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    out: set[str] = set()
    for node in _load_time_imports(ast.parse(path.read_text(), str(path)).body):
        if isinstance(node, ast.Import):
            targets = [alias.name for alias in node.names]
        else:
            if node.level:
                base = package.split(".")
                base = base[: len(base) - node.level + 1]
                source = ".".join(base + ([node.module] if node.module else []))
            else:
                source = node.module or ""
            # `from pkg import sub` imports the submodule; `from pkg import name` the package.
            targets = [f"{source}.{alias.name}" if f"{source}.{alias.name}" in known else source
                       for alias in node.names]
        for target in targets:
            while target and target not in known:  # `import a.b.c` of an outside module
                target = target.rpartition(".")[0]
            # Importing `a.b.c` first runs `a/__init__` and `a/b/__init__`; a module's own
            # packages have started loading before it runs, so they add nothing.
            while target and target != module and not module.startswith(target + "."):
                out.add(target)
                target = target.rpartition(".")[0]
    return out


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """One cycle through each strongly connected component of more than one module."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    components: list[set[str]] = []

    def visit(v: str) -> None:  # Tarjan; the graph is a few hundred modules deep at most
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in sorted(graph[v]):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = set()
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.add(w)
                if w == v:
                    break
            if len(component) > 1:
                components.append(component)

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return [_shortest_cycle(graph, c) for c in components]


def _shortest_cycle(graph: dict[str, set[str]], component: set[str]) -> list[str]:
    start = min(component)
    paths = {start: [start]}
    frontier = [start]
    while frontier:
        nxt = []
        for v in frontier:
            for w in sorted(graph[v] & component):
                if w == start:
                    return [*paths[v], start]
                if w not in paths:
                    paths[w] = [*paths[v], w]
                    nxt.append(w)
        frontier = nxt
    raise AssertionError("a strongly connected component always holds a cycle")


def test_the_packages_have_no_import_cycle() -> None:
    """A module imported while another is half-loaded sees a partial namespace; and a cycle
    means the two cannot be understood (or moved) apart. Cut one edge: move the shared part
    down, or import under TYPE_CHECKING / inside the function that needs it."""
    known = _modules()
    graph = {m: _imports(m, p, known) for m, p in known.items()}
    cycles = _cycles(graph)
    assert not cycles, "import cycles:\n" + "\n".join(" -> ".join(c) for c in cycles)


def test_the_checker_sees_a_cycle_and_skips_lazy_imports(tmp_path: Path) -> None:
    """The checker itself: a relative import closing a loop is found; one inside a function
    or under TYPE_CHECKING is not an edge."""
    pkg = tmp_path / "pkg"
    pkg.mkdir()
    (pkg / "__init__.py").write_text("")
    (pkg / "a.py").write_text("from .b import x\n")
    (pkg / "b.py").write_text("from pkg import c\nx = 1\n")
    (pkg / "c.py").write_text("from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n"
                              "    from pkg.a import x\n"
                              "def f():\n    from pkg import a\n"
                              "import pkg.a\n")
    known = {"pkg": pkg / "__init__.py", **{f"pkg.{n}": pkg / f"{n}.py" for n in "abc"}}
    graph = {m: _imports(m, p, known) for m, p in known.items()}
    assert graph["pkg.c"] == {"pkg.a"}
    assert _cycles(graph) == [["pkg.a", "pkg.b", "pkg.c", "pkg.a"]]
    (pkg / "c.py").write_text("if TYPE_CHECKING:\n    import pkg.a\n"
                              "def f():\n    from pkg import a\n")
    graph = {m: _imports(m, p, known) for m, p in known.items()}
    assert graph["pkg.c"] == set()
    assert _cycles(graph) == []
