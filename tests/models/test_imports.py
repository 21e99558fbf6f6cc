"""The import graph of ``oraculo.models``: every import of one of its modules is at module level
(not inside a function, not under ``TYPE_CHECKING``), and the graph has no cycle.

A cycle hidden by a function-level import works until someone moves the import; a type shared by
two modules belongs in a third that both import (``spec``, ``backends.base``, ``basehandler``, the
wire types in ``protocol``). Heavy third-party libraries (torch, xgrammar, faster-whisper) may still
be imported late: that keeps the package cheap to import and makes no cycle.
"""

from __future__ import annotations

import ast
from pathlib import Path

import oraculo.models

PACKAGE = "oraculo.models"
ROOT = Path(next(iter(oraculo.models.__path__)))


def _modules() -> dict[str, Path]:
    mods = {}
    for path in ROOT.rglob("*.py"):
        parts = [PACKAGE, *path.relative_to(ROOT).with_suffix("").parts]
        if parts[-1] == "__init__":
            parts.pop()
        mods[".".join(parts)] = path
    return mods


def _targets(
    node: ast.Import | ast.ImportFrom, module: str, is_package: bool, mods: dict[str, Path]
) -> list[str]:
    """The modules of this package that one import statement names (ancestors left out: Python
    imports a module's parent packages anyway, and ``from . import x`` means module ``x``)."""
    if isinstance(node, ast.Import):
        names = [a.name for a in node.names]
    else:
        if node.level:
            base = module.split(".") if is_package else module.split(".")[:-1]
            base = base[: len(base) - node.level + 1]
            source = ".".join([*base, *([node.module] if node.module else [])])
        else:
            source = node.module or ""
        names = [source, *(f"{source}.{a.name}" for a in node.names)]
    found = [n for n in names if n in mods]
    return [n for n in found if not any(o.startswith(n + ".") for o in found if o != n)]


def _graph() -> tuple[dict[str, set[str]], list[str]]:
    mods = _modules()
    edges: dict[str, set[str]] = {m: set() for m in mods}
    late: list[str] = []
    for module, path in mods.items():
        tree = ast.parse(path.read_text(), filename=str(path))
        top = set(map(id, tree.body))
        for node in ast.walk(tree):
            if not isinstance(node, ast.Import | ast.ImportFrom):
                continue
            targets = _targets(node, module, path.name == "__init__.py", mods)
            if not targets:
                continue
            if id(node) not in top:
                late.append(f"{path.relative_to(ROOT)}:{node.lineno}")
            for t in targets:
                if t != module and not module.startswith(t + "."):
                    edges[module].add(t)
    return edges, late


def _cycle(edges: dict[str, set[str]]) -> list[str] | None:
    state: dict[str, int] = {}  # 1 on the stack, 2 done
    stack: list[str] = []

    def visit(m: str) -> list[str] | None:
        state[m] = 1
        stack.append(m)
        for t in sorted(edges[m]):
            if state.get(t) == 1:
                return [*stack[stack.index(t) :], t]
            if t not in state and (found := visit(t)):
                return found
        stack.pop()
        state[m] = 2
        return None

    for m in sorted(edges):
        if m not in state and (found := visit(m)):
            return found
    return None


def test_package_imports_are_at_module_level() -> None:
    _, late = _graph()
    assert late == [], f"imports of oraculo.models modules below module level: {late}"


def test_import_graph_has_no_cycle() -> None:
    edges, _ = _graph()
    assert len(edges) > 15  # the walk found the package
    assert _cycle(edges) is None, " -> ".join(_cycle(edges) or [])


def test_cycle_finder_finds_one() -> None:
    assert _cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert _cycle({"a": {"b", "c"}, "b": {"c"}, "c": set()}) is None
