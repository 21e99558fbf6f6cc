"""The single-user server: ``jupyterhub-singleuser`` without JupyterLab's node start-up call.

Importing ``jupyterlab.labapp`` asks ``node yarn.js config --json`` for the npm registry, a node
process on every server start (0.3–0.6 s here, a fifth of a spawn). The registry matters only
for building extensions from npm, which a workspace does not do: its JupyterLab extension
manager is read-only (extensions come with the image or environment, never from the internet).
So the registry comes from ``ORACULO_NPM_REGISTRY`` (default: JupyterLab's own default) and no
node process is started.

It also keeps the server's hub token away from the code in its kernels, which runs as the same
OS account:

- the process is made non-dumpable first (:func:`~oraculo.kernels.sandbox.protect_process`),
  whatever features load: a process of the same account (a kernel, a shell) can then read neither
  its memory nor ``/proc/<pid>/environ``, where the token was at start;
- once the server is set up, the token leaves ``os.environ`` (held by
  :func:`~oraculo.kernels.credentials.hold_server_token`), so no child (terminal, panel server,
  kernel, language server) inherits it, and ``jpserver-<pid>.json`` in the runtime folder, which
  Jupyter writes with the server's token in it, is written without it;
- the panel server gets a narrow token of its own, minted here; narrow tokens left by an earlier
  server of this user (killed before it could revoke them) are revoked;
- the server's authorizer is :class:`~oraculo.kernels.authorizer.NarrowTokenAuthorizer`: a
  kernel's or the panel server's token opens no terminal and starts no kernel.

And it leaves out the hub's own code that ``jupyterhub-singleuser`` imports and a user's server
never runs (:func:`keep_hub_code_out`, 24 MB in every server), and httpx's command-line tool,
which ``import httpx`` loads with rich, click and pygments (4 MB).

    python -m oraculo.singleuser [jupyterhub-singleuser options]
"""

from __future__ import annotations

import sys

# Before anything imports httpx: its command-line tool stays out ("httpx[cli]" then tells anyone
# who calls httpx.main in this process to install it; the `httpx` command is not affected).
sys.modules.setdefault("httpx._main", None)  # type: ignore[arg-type]

import importlib.util
import logging
import os
import stat
import threading
import time
import types
from typing import Any

import httpx
from traitlets import HasTraits

from oraculo.kernels import credentials
from oraculo.kernels.sandbox import protect_process

log = logging.getLogger("oraculo.singleuser")

#: Seconds the panel server's token stays valid (a server running longer than that needs a
#: restart for its panels).
PANEL_TOKEN_EXPIRES_IN = 30 * 24 * 3600
AUTHORIZER = "oraculo.kernels.authorizer.NarrowTokenAuthorizer"


def skip_yarn_config() -> None:
    """Make JupyterLab read the npm registry from the environment instead of from yarn."""
    import jupyterlab.commands as commands

    if not hasattr(commands, "_yarn_config"):  # a JupyterLab that no longer asks yarn
        return
    registry = os.environ.get("ORACULO_NPM_REGISTRY", "")

    def yarn_config(logger: Any) -> dict[str, dict[str, str]]:
        return {"yarn config": {"registry": registry} if registry else {}, "npm config": {}}

    commands._yarn_config = yarn_config


def _lazy_module(name: str) -> None:
    """Put ``name`` in ``sys.modules`` as a module that runs its code on first use."""
    spec = importlib.util.find_spec(name)
    if spec is None or spec.loader is None:
        return
    loader = importlib.util.LazyLoader(spec.loader)
    spec.loader = loader
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    loader.exec_module(module)
    # Bound on its package too: ``from . import orm`` then finds it without touching it (a
    # lookup through sys.modules reads the module's __spec__, which would load it).
    package, _, attr = name.rpartition(".")
    setattr(sys.modules[package], attr, module)


def keep_hub_code_out() -> None:
    """Import ``jupyterhub.log`` without the hub's request handlers, and the hub's ORM lazily.

    ``jupyterhub-singleuser`` imports ``jupyterhub.log``, which imports the hub's request
    handlers for one check: whether a request's handler is the hub's health-check handler, which
    only the hub routes. The handlers, ``jupyterhub.metrics``, ``scopes`` and ``roles`` import the
    hub's database models and Alembic. A user's server reaches the hub over HTTP and never uses
    them: they cost 24 MB in every server (``python -m benchmarks.density``).

    So ``jupyterhub.log`` is imported here against a stand-in for the handlers' module, whose
    health-check class no handler of this server is an instance of (the check stays exact), and
    the stand-in is then taken out of ``sys.modules``: code that imports the handlers later gets
    the real ones. ``jupyterhub.orm`` loads on first use, whole, if anything ever uses it.
    """
    if "jupyterhub.log" in sys.modules:  # imported already: nothing to keep out
        return
    import jupyterhub

    pages = types.ModuleType("jupyterhub.handlers.pages")

    class HealthCheckHandler:
        """The hub's health check, which a user's server does not route."""

    pages.HealthCheckHandler = HealthCheckHandler  # type: ignore[attr-defined]
    handlers = types.ModuleType("jupyterhub.handlers")
    handlers.__path__ = []
    handlers.pages = pages  # type: ignore[attr-defined]
    if "jupyterhub.orm" not in sys.modules:
        _lazy_module("jupyterhub.orm")
    sys.modules.update({"jupyterhub.handlers": handlers, "jupyterhub.handlers.pages": pages})
    try:
        import jupyterhub.log
    finally:
        for name in ("jupyterhub.handlers", "jupyterhub.handlers.pages"):
            sys.modules.pop(name, None)
        if getattr(jupyterhub, "handlers", None) is handlers:
            delattr(jupyterhub, "handlers")


def _settle_token_readers(serverapp: Any) -> None:
    """Read the server token everywhere the set-up server reads it lazily from the environment
    (each ``hub_auth``; the oraculo extension's model-service client), before it leaves it."""
    readers = [getattr(serverapp.identity_provider, "hub_auth", None)]
    for apps in serverapp.extension_manager.extension_apps.values():
        for app in apps:
            readers += [getattr(app, "hub_auth", None), getattr(app, "models", None)]
    for reader in readers:
        for name in ("api_token", "token"):
            if isinstance(reader, HasTraits) and reader.has_trait(name):
                getattr(reader, name)


def _server_info_without_token(serverapp: Any) -> None:
    # Under JupyterHub the server's "token" is its hub token; Jupyter would write it into
    # jpserver-<pid>.json and jpserver-<pid>-open.html in the runtime folder, in a kernel's reach.
    server_info = serverapp.server_info

    def info() -> dict[str, Any]:
        return {**server_info(), "token": ""}

    serverapp.server_info = info
    serverapp.no_browser_open_file = True


#: Seconds between tries to mint the panel server's token while the hub does not answer in time
#: (busy starting a crowd of servers, say): about eight minutes in all.
PANEL_TOKEN_RETRY_DELAYS = (2.0, 5.0, 10.0, 30.0, 60.0, 60.0, 60.0, 120.0, 120.0)


def _transient(e: Exception) -> bool:
    """Whether asking the hub again may succeed: it did not answer, or answered 5xx or 429."""
    if isinstance(e, httpx.TransportError):
        return True
    if isinstance(e, httpx.HTTPStatusError):
        status = e.response.status_code
        return status >= 500 or status == 429
    return False


def _panel_token(
    hub: credentials.HubTokens,
    started: float,
    delays: tuple[float, ...] = PANEL_TOKEN_RETRY_DELAYS,
) -> None:
    """Mint the panel server's token, trying again while the hub is slow or away.

    After a first failure, a panel opened meanwhile does not wait for the retries (its panel
    server starts without a token; it cannot call this server until this server restarts); one
    opened after a retry succeeds gets the token."""
    for attempt, delay in enumerate((*delays, None)):
        try:
            hub.revoke_stale_sync(before=started)
            token = hub.mint_sync(
                PANEL_TOKEN_EXPIRES_IN, note="oraculo panel", scopes=credentials.PANEL_TOKEN_SCOPES
            )
        except Exception as e:  # the server still starts; its panels cannot call it
            if attempt == 0:
                credentials.hold_panel_token(None)
            if delay is None or not _transient(e):
                log.warning("Could not mint the panel server's token: %s", type(e).__name__)
                return
            log.warning(
                "Could not mint the panel server's token yet (%s); trying again in %.0f s",
                type(e).__name__,
                delay,
            )
            time.sleep(delay)
        else:
            credentials.hold_panel_token(token)
            if attempt:
                log.info("Minted the panel server's token at try %d", attempt + 1)
            return


def start_panel_token(started: float) -> None:
    """Mint the panel server's token (and revoke stale ones) beside the server's start, in a
    thread: two hub calls that would otherwise delay every spawn (up to 0.25 s on a loaded hub)."""
    hub = credentials.HubTokens.from_environment()
    if hub is None:
        return
    credentials.minting_panel_token()
    threading.Thread(
        target=_panel_token, args=(hub, started), name="oraculo-panel-token", daemon=True
    ).start()


def private_folder(path: str) -> None:
    """Make ``path`` (our folder in the user's home: ``~/.oraculo``) mode 0700, or tighten it.

    What lives below it (memories, conversations, agent runs, uploads) is made by code that
    creates only the last folder of a path with 0700 (``os.makedirs`` gives the ones above it
    the umask's mode), so the top one is made here, private, before any of them."""
    os.makedirs(path, 0o700, exist_ok=True)
    st = os.lstat(path)
    if stat.S_ISDIR(st.st_mode) and stat.S_IMODE(st.st_mode) & 0o077:
        os.chmod(path, stat.S_IMODE(st.st_mode) & 0o700)


def main(argv: list[str] | None = None) -> None:
    started = time.time()
    protect_process(log)
    keep_hub_code_out()
    skip_yarn_config()
    try:
        private_folder(os.path.join(os.path.expanduser("~"), ".oraculo"))
    except OSError as e:
        log.warning("Could not make ~/.oraculo private: %s", e)
    from jupyter_core.application import NoStart
    from jupyter_server.extension.application import (
        _preparse_for_stopping_flags,
        _preparse_for_subcommand,
    )
    from jupyterhub.singleuser.extension import JupyterHubSingleUser

    args = list(sys.argv[1:] if argv is None else argv)
    subapp = _preparse_for_subcommand(JupyterHubSingleUser, args)
    if subapp:
        subapp.start()
        return
    _preparse_for_stopping_flags(JupyterHubSingleUser, args)
    # As JupyterHubSingleUser.launch_instance, with the token taken away between set-up and start.
    serverapp = JupyterHubSingleUser.initialize_server(
        argv=[f"--ServerApp.authorizer_class={AUTHORIZER}", *args]
    )
    _settle_token_readers(serverapp)
    credentials.hold_server_token()
    _server_info_without_token(serverapp)
    start_panel_token(started)
    try:
        serverapp.start()
    except NoStart:
        pass


if __name__ == "__main__":
    main()
