"""``panel serve``, as each user's panel server runs it: without the commands it never runs.

Started by :func:`oraculo.extensions.panels.proxy._command`, with ``panel serve``'s arguments:

    python -m oraculo.extensions.panels.serve [panel serve arguments]

Two things that ``panel serve`` imports are left out, 11 MB of every user's panel server:

- httpx's command-line tool, with rich, click and pygments (5 MB). ``import httpx`` (the panels'
  client for the Jupyter server's API) imports it.
- Panel's other commands (6 MB): ``panel bundle``, ``compile`` and ``convert``, with
  ``requests``, urllib3 and Pyodide's conversion code. ``panel.command``'s ``__init__`` imports
  all of them to list them in its help. Here the package is made without running its
  ``__init__``, and only ``panel.command.serve`` is imported from it; Panel's own ``panel``
  command, anywhere else, is not affected.
"""

from __future__ import annotations

import argparse
import importlib.util
import sys


def _package_without_init(name: str) -> None:
    """Make package ``name`` importable from without running its ``__init__``: its submodules
    import as usual (relative imports of the parent's siblings included)."""
    if name in sys.modules:
        return
    spec = importlib.util.find_spec(name)
    if spec is None or spec.submodule_search_locations is None:
        raise ImportError(f"{name} is not an installed package")
    package = importlib.util.module_from_spec(spec)
    sys.modules[name] = package
    parent, _, child = name.rpartition(".")
    setattr(importlib.import_module(parent), child, package)


def main(argv: list[str]) -> int:
    # Before anything imports httpx; "httpx[cli]" would then tell a caller of httpx.main in
    # this process to install it (the `httpx` command elsewhere is not affected).
    sys.modules.setdefault("httpx._main", None)  # type: ignore[arg-type]
    _package_without_init("panel.command")
    from panel.command.serve import Serve  # what `panel serve` runs, as panel.command.main does

    parser = argparse.ArgumentParser(prog="panel serve", description=Serve.help)
    command = Serve(parser=parser)
    args = parser.parse_args(argv)
    try:
        result = command.invoke(args)
    except Exception as e:  # as `panel serve` says it: one line, then exit 1
        from panel.config import config

        if config.autoreload or config.log_level in ("DEBUG", "INFO"):
            raise
        print(f"ERROR: {e}", file=sys.stderr)
        return 1
    return 1 if result is False else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
