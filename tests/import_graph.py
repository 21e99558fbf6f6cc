"""The import graph of one of our packages, read from the source (nothing is imported).

Used by the layout tests: no cycles, no cycle hidden by an import inside a function, and which
package may import which.
"""

from __future__ import annotations

import ast
import importlib
from dataclasses import dataclass, field
from pathlib import Path


@dataclass
class Graph:
    """Modules of a package, the package's modules each imports, and the late (function-level or
    ``TYPE_CHECKING``) imports among those."""

    package: str
    edges: dict[str, set[str]] = field(default_factory=dict)
    late: list[str] = field(default_factory=list)

    def cycle(self) -> list[str] | None:
        """One cycle of the graph, as a path that ends where it starts, or None."""
        state: dict[str, int] = {}  # 1 on the stack, 2 done
        stack: list[str] = []

        def visit(m: str) -> list[str] | None:
            state[m] = 1
            stack.append(m)
            for t in sorted(self.edges[m]):
                if state.get(t) == 1:
                    return [*stack[stack.index(t) :], t]
                if t not in state and (found := visit(t)):
                    return found
            stack.pop()
            state[m] = 2
            return None

        for m in sorted(self.edges):
            if m not in state and (found := visit(m)):
                return found
        return None


def _modules(package: str) -> dict[str, Path]:
    root = Path(next(iter(importlib.import_module(package).__path__)))
    mods = {}
    for path in root.rglob("*.py"):
        parts = [package, *path.relative_to(root).with_suffix("").parts]
        if parts[-1] == "__init__":
            parts.pop()
        mods[".".join(parts)] = path
    return mods


def _targets(
    node: ast.Import | ast.ImportFrom, module: str, is_package: bool, mods: dict[str, Path]
) -> list[str]:
    """The package's modules that one import statement names (parent packages left out: Python
    imports them anyway, and ``from . import x`` means module ``x``)."""
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


def import_graph(package: str) -> Graph:
    mods = _modules(package)
    graph = Graph(package, {m: set() for m in mods})
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
                graph.late.append(f"{module}:{node.lineno}")
            for t in targets:
                if t != module and not module.startswith(t + "."):
                    graph.edges[module].add(t)
    return graph
