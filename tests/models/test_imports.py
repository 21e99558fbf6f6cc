"""The import graph of ``oraculo.models``: every import of one of its modules is at module level
(not inside a function, not under ``TYPE_CHECKING``), and the graph has no cycle.

A cycle hidden by a function-level import works until someone moves the import; a type shared by
two modules belongs in a third that both import (``spec``, ``backends.base``, ``basehandler``, the
wire types in ``protocol``). Heavy third-party libraries (torch, xgrammar, faster-whisper) may still
be imported late: that keeps the package cheap to import and makes no cycle.
"""

from __future__ import annotations

from tests.import_graph import Graph, import_graph

PACKAGE = "oraculo.models"


def test_package_imports_are_at_module_level() -> None:
    late = import_graph(PACKAGE).late
    assert late == [], f"imports of oraculo.models modules below module level: {late}"


def test_import_graph_has_no_cycle() -> None:
    graph = import_graph(PACKAGE)
    assert len(graph.edges) > 15  # the walk found the package
    assert graph.cycle() is None, " -> ".join(graph.cycle() or [])


def test_cycle_finder_finds_one() -> None:
    assert Graph("x", {"a": {"b"}, "b": {"c"}, "c": {"a"}}).cycle() == ["a", "b", "c", "a"]
    assert Graph("x", {"a": {"b", "c"}, "b": {"c"}, "c": set()}).cycle() is None
