"""``oraculo``: the workspace's command line.

oraculo hub [jupyterhub options]        the hub with Oráculo's defaults (OraculoHub)
oraculo models [model service options]  the shared model service on its own (development,
                                        or a separate GPU host)
oraculo singleuser [options]            a user's server, as the hub starts it
"""

from __future__ import annotations

import sys

USAGE = __doc__ or ""


def hub(argv: list[str]) -> None:
    """JupyterHub configured by :class:`~oraculo.hub.config.OraculoHub`; a
    ``jupyterhub_config.py`` in the working directory (or ``-f``) is loaded on top of it."""
    from jupyterhub.app import JupyterHub
    from traitlets.config import Config

    from oraculo.hub.config import OraculoHub

    config = Config()
    OraculoHub(config=config).apply(config)
    JupyterHub.instance(config=config)  # launch_instance takes this instance, loads the file
    JupyterHub.launch_instance(argv)


def models(argv: list[str]) -> None:
    from oraculo.models.app import main as models_main

    models_main(argv)


def singleuser(argv: list[str]) -> None:
    from oraculo.singleuser import main as singleuser_main

    singleuser_main(argv)


COMMANDS = {"hub": hub, "models": models, "singleuser": singleuser}


def main(argv: list[str] | None = None) -> None:
    args = sys.argv[1:] if argv is None else argv
    if not args or args[0] in ("-h", "--help", "help"):
        print(USAGE.strip())
        return
    command = COMMANDS.get(args[0])
    if command is None:
        print(f"oraculo: unknown command {args[0]!r}\n\n{USAGE.strip()}", file=sys.stderr)
        raise SystemExit(2)
    sys.argv = [f"oraculo {args[0]}", *args[1:]]
    command(args[1:])


if __name__ == "__main__":
    main()
