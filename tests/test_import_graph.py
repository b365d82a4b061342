"""The import graph of the tree has no circle.

The graph is read from the source (``ast``), nothing is imported: one node per module of
mlx_bald/, benchmarks/, converters/ and apps/ (a package's ``__init__.py`` is the package), one
edge per import of another module of the tree. EVERY import statement counts: module-level,
inside a function, under ``if TYPE_CHECKING:``. A lazy import only hides a circle from the
interpreter at start-up; the two modules still depend on each other (the circles this test was
written against were such: the harness imported plot and report inside a function, the
recovery stage imported the encoder recipe's run for a type annotation). A module that must
hand work back up the stack takes a callable or a Protocol instead.

``python tests/test_import_graph.py`` prints every circle (strongly connected component).
"""
from __future__ import annotations

import ast
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PACKAGES = ("mlx_bald", "benchmarks", "converters", "apps")


def modules(root: Path = ROOT, packages=PACKAGES) -> dict[str, Path]:
    """{dotted module name: file} for every .py file of the packages."""
    out = {}
    for package in packages:
        for path in sorted((root / package).rglob("*.py")):
            parts = list(path.relative_to(root).with_suffix("").parts)
            if parts[-1] == "__init__":
                parts.pop()
            out[".".join(parts)] = path
    return out


def imported_names(module: str, path: Path) -> set[str]:
    """Every dotted name an import statement anywhere in the file names (``from a import b``
    gives ``a.b``, which ``graph`` reads as the submodule b, or else as a), relative imports
    resolved."""
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    names = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            names |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                up = package.split(".")[: len(package.split(".")) - (node.level - 1)]
                base = ".".join(up + ([base] if base else []))
            names |= {f"{base}.{a.name}" for a in node.names}
    return names


def graph(mods: dict[str, Path] | None = None) -> dict[str, set[str]]:
    """{module: the modules of the tree it imports} (an import of ``a.b.c`` is an edge to the
    longest prefix that is a module of the tree)."""
    mods = modules() if mods is None else mods
    edges: dict[str, set[str]] = {}
    for module, path in mods.items():
        edges[module] = set()
        for name in imported_names(module, path):
            while name and name not in mods:
                name = name.rpartition(".")[0]
            if name and name != module:
                edges[module].add(name)
    return edges


def cycles(edges: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components of more than one module (Tarjan's, iterative)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found = []
    for start in sorted(edges):
        if start in index:
            continue
        work = [(start, iter(sorted(edges[start])))]
        index[start] = low[start] = len(index)
        stack.append(start)
        on_stack.add(start)
        while work:
            node, children = work[-1]
            child = next(children, None)
            if child is not None:
                if child not in index:
                    index[child] = low[child] = len(index)
                    stack.append(child)
                    on_stack.add(child)
                    work.append((child, iter(sorted(edges.get(child, ())))))
                elif child in on_stack:
                    low[node] = min(low[node], index[child])
                continue
            work.pop()
            if work:
                low[work[-1][0]] = min(low[work[-1][0]], low[node])
            if low[node] == index[node]:
                component = []
                while True:
                    top = stack.pop()
                    on_stack.discard(top)
                    component.append(top)
                    if top == node:
                        break
                if len(component) > 1:
                    found.append(sorted(component))
    return found


def test_the_cycle_finder_finds_a_lazy_import_circle(tmp_path):
    pkg = tmp_path / "pkg"
    pkg.mkdir()
    (pkg / "__init__.py").write_text("")
    (pkg / "a.py").write_text("from pkg.b import thing\n")
    (pkg / "b.py").write_text("def f():\n    from . import c\n")
    (pkg / "c.py").write_text("from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    import pkg.a\n")
    (pkg / "d.py").write_text("import pkg.a\n")
    edges = graph(modules(tmp_path, ("pkg",)))
    assert edges["pkg.b"] == {"pkg.c"} and edges["pkg.d"] == {"pkg.a"}
    assert cycles(edges) == [["pkg.a", "pkg.b", "pkg.c"]]


def test_the_tree_has_no_import_circle():
    edges = graph()
    assert len(edges) > 100 and "mlx_bald.compress.train.distill" in edges  # the tree was read
    assert cycles(edges) == []


if __name__ == "__main__":
    found = cycles(graph())
    for component in found:
        print(" <-> ".join(component))
    sys.exit(1 if found else 0)
