"""The package's shape, read from its source: commands are leaves, the core does not reach up,
and no import cycle.

Every ``import`` and ``from ... import`` statement of every module under ``alexnet/`` counts,
also the ones inside functions (a lazy import is still a dependency). An import of a name from
a package counts as an import of the submodule where the name is one, else of the package.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

from conftest import ROOT

PACKAGE = ROOT / "alexnet"
# `python -m alexnet.<name>`: argument parsing and one library call; nothing may import them
COMMANDS = {
    "alexnet.train",
    "alexnet.eval",
    "alexnet.prepare",
    "alexnet.synthetic",
    "alexnet.finetune",
    "alexnet.predict",
    "alexnet.features",
    "alexnet.export",
    "alexnet.model.__main__",
    "alexnet.bench.__main__",
    "alexnet.figures.__main__",
}
CORE = ("alexnet.config", "alexnet.model", "alexnet.data")  # what everything else builds on
ABOVE_CORE = ("alexnet.training", "alexnet.inference", "alexnet.figures", "alexnet.bench")


def module_name(path: Path) -> str:
    parts = path.relative_to(ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


MODULES = {module_name(p): p for p in sorted(PACKAGE.rglob("*.py"))}


def imports_of(name: str) -> set[str]:
    """The ``alexnet`` modules that module ``name`` imports, anywhere in its source."""
    path = MODULES[name]
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:  # relative: resolved against this module's package
                anchor = package.rsplit(".", node.level - 1)[0] if node.level > 1 else package
                base = f"{anchor}.{base}" if base else anchor
            for alias in node.names:
                sub = f"{base}.{alias.name}"
                found.add(sub if sub in MODULES else base)
    return {m for m in found if m in MODULES and m != name}


GRAPH = {name: imports_of(name) for name in MODULES}


def within(name: str, prefixes: tuple[str, ...]) -> bool:
    return any(name == p or name.startswith(p + ".") for p in prefixes)


def test_the_walk_sees_lazy_and_relative_imports() -> None:
    """The graph is read right: known edges of this code base, including a lazy import."""
    assert "alexnet.model.towers" in GRAPH["alexnet.runtime"]  # inside Runtime.wrap
    assert "alexnet.training.loop" in GRAPH["alexnet.train"]
    assert set(COMMANDS) <= set(MODULES), set(COMMANDS) - set(MODULES)


def test_nothing_imports_a_command() -> None:
    offenders = [f"{m} imports {c}" for m, deps in GRAPH.items() for c in deps & COMMANDS]
    assert not offenders, "\n".join(offenders)


@pytest.mark.parametrize("core", CORE)
def test_the_core_does_not_import_training_inference_or_figures(core: str) -> None:
    offenders = [
        f"{m} imports {d}"
        for m, deps in GRAPH.items()
        if within(m, (core,))
        for d in deps
        if within(d, ABOVE_CORE) or d in COMMANDS
    ]
    assert not offenders, "\n".join(offenders)


def find_cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Tarjan's strongly connected components: a cycle is a component of two or more nodes."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    cycles: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        for w in sorted(graph.get(v, ())):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                cycles.append(sorted(component))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return cycles


def test_no_import_cycle() -> None:
    cycles = find_cycles(GRAPH)
    assert not cycles, "import cycles: " + "; ".join(" <-> ".join(c) for c in cycles)


def test_find_cycles_finds_a_planted_cycle() -> None:
    graph = {"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a", "e"}, "e": set()}
    assert find_cycles(graph) == [["a", "b", "c"]]
    assert find_cycles({**graph, "c": set()}) == []
