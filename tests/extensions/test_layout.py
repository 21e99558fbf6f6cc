"""The extension's layout holds: one package per feature, a shared ``base`` that uses none of
them, features that use each other only through what they are handed at connect time (and the
public wire models of ``<feature>.models``), panels that are clients of the public API, and no
import cycle, hidden or not."""

from __future__ import annotations

from tests.import_graph import import_graph

PKG = "oraculo.extensions"
FEATURES = (
    "agents",
    "api",
    "chat",
    "courses",
    "execute",
    "git",
    "mcp",
    "memory",
    "status",
    "usage",
    "voice",
)


def _part(module: str) -> str:
    """``oraculo.extensions.chat.service`` → ``chat``; the app and package itself → ``app``."""
    rest = module[len(PKG) + 1 :] if module.startswith(PKG + ".") else ""
    return rest.split(".")[0] if rest and rest != "app" else "app"


def test_no_import_cycle_and_no_import_of_our_modules_inside_a_function() -> None:
    graph = import_graph(PKG)
    assert graph.cycle() is None
    # The one late import: jupyter_server's entry point imports the app only when it loads the
    # extension, so the kernel and the panel server can import ``base.wire`` without it.
    assert [late.rsplit(":", 1)[0] for late in graph.late] == [PKG]


def test_every_feature_has_its_own_package_with_feature_and_handlers() -> None:
    graph = import_graph(PKG)
    for name in FEATURES:
        assert f"{PKG}.{name}.feature" in graph.edges, name
        assert f"{PKG}.{name}.handlers" in graph.edges, name


def test_base_uses_no_feature_and_features_use_each_other_only_through_their_models() -> None:
    graph = import_graph(PKG)
    wrong = []
    for module, targets in graph.edges.items():
        part = _part(module)
        for target in targets:
            other = _part(target)
            if other in (part, "base", "app") and not (part == "base" and other == "app"):
                continue
            if part in FEATURES and other in FEATURES and target == f"{PKG}.{other}.models":
                continue  # another feature's public wire models
            if part == "app" or (part == "panels" and other == "base"):
                continue
            wrong.append(f"{module} -> {target}")
    assert wrong == []


def test_panels_import_no_feature() -> None:
    graph = import_graph(PKG)
    for module, targets in graph.edges.items():
        if _part(module) == "panels":
            assert {_part(t) for t in targets} <= {"panels", "base"}, module
