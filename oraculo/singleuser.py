"""The single-user server: ``jupyterhub-singleuser`` without JupyterLab's node start-up call.

Importing ``jupyterlab.labapp`` asks ``node yarn.js config --json`` for the npm registry, a node
process on every server start (0.3–0.6 s here, a fifth of a spawn). The registry matters only
for building extensions from npm, which a workspace does not do: its JupyterLab extension
manager is read-only (extensions come with the image or environment, never from the internet).
So the registry comes from ``ORACULO_NPM_REGISTRY`` (default: JupyterLab's own default) and no
node process is started. Everything else is ``jupyterhub.singleuser`` unchanged.

    python -m oraculo.singleuser [jupyterhub-singleuser options]
"""

from __future__ import annotations

import os
from typing import Any


def skip_yarn_config() -> None:
    """Make JupyterLab read the npm registry from the environment instead of from yarn."""
    import jupyterlab.commands as commands

    if not hasattr(commands, "_yarn_config"):  # a JupyterLab that no longer asks yarn
        return
    registry = os.environ.get("ORACULO_NPM_REGISTRY", "")

    def yarn_config(logger: Any) -> dict[str, dict[str, str]]:
        return {"yarn config": {"registry": registry} if registry else {}, "npm config": {}}

    commands._yarn_config = yarn_config


def main(argv: list[str] | None = None) -> None:
    skip_yarn_config()
    from jupyterhub.singleuser import main as singleuser

    singleuser(argv)


if __name__ == "__main__":
    main()
