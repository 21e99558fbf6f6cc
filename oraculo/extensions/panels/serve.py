"""``panel serve``, as each user's panel server runs it: without httpx's command-line tool.

``import httpx`` (the panels' client for the Jupyter server's API) also imports httpx's
command-line tool, and with it rich, click and pygments: 5 MB in every user's panel server,
which never runs it. Started by :func:`oraculo.extensions.panels.proxy._command`:

    python -m oraculo.extensions.panels.serve [panel serve arguments]
"""

from __future__ import annotations

import sys


def main(argv: list[str]) -> None:
    # Before anything imports httpx; "httpx[cli]" would then tell a caller of httpx.main in
    # this process to install it (the `httpx` command elsewhere is not affected).
    sys.modules.setdefault("httpx._main", None)  # type: ignore[arg-type]
    from panel.command import main as panel

    sys.argv = ["panel", "serve", *argv]  # Panel's command reads sys.argv
    panel()


if __name__ == "__main__":
    main(sys.argv[1:])
