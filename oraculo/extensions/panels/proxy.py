"""One ``panel serve`` per user server, behind jupyter-server-proxy, for every oraculo panel.

jupyter-server-proxy mounts the process at ``<base_url>oraculo-panels/`` and authenticates every
HTTP request and websocket upgrade through the Jupyter server (hub OAuth under JupyterHub, the
token or its cookie in a plain ``jupyter server``) before anything reaches Panel. So that nothing
can reach Panel another way, it listens on a Unix socket in a fresh 0700 directory, never on a TCP
port that any local user could connect to.

Each panel is one script in ``apps/``; ``panel serve`` serves each at ``oraculo-panels/<stem>``, so
a new panel (chat, memory, voice, backstage) is one more file there and one more launcher tile.
"""

from __future__ import annotations

import atexit
import functools
import logging
import os
import shutil
import sys
import tempfile
from pathlib import Path
from typing import Any

import httpx

from oraculo import plugins
from oraculo.kernels import credentials

_log = logging.getLogger(__name__)

#: The name jupyter-server-proxy mounts the panel server under, below the server's base URL.
PROXY_NAME = "oraculo-panels"

_HERE = Path(__file__).parent
APPS_DIR = _HERE / "apps"
STATIC_DIR = _HERE / "static"

#: Seconds to wait for ``panel serve`` to answer after it is started (importing Panel is slow on
#: a busy machine).
START_TIMEOUT = 60.0

# Request headers that carry the user's Jupyter/JupyterHub credentials. jupyter-server-proxy has
# already checked them; Panel does not need them, and Bokeh would otherwise copy every request
# header and cookie into the session token that it embeds in the page, in reach of scripts.
_CREDENTIAL_HEADERS = ("Cookie", "Authorization")


def app_paths() -> list[Path]:
    """The panel scripts that ``panel serve`` serves, one app per file: ours, then those of
    the ``oraculo.panels`` entry point group (served at ``oraculo-panels/<file stem>``; one
    that cannot be found, or whose name is taken, is logged and left out)."""
    ours = sorted(APPS_DIR.glob("*.py"))
    taken = {p.stem for p in ours}
    for name, file in plugins.module_files(plugins.PANELS, _log):
        path = Path(file)
        if path.stem in taken:
            _log.error("panel plugin %r: the name %r is taken; left out", name, path.stem)
            continue
        taken.add(path.stem)
        ours.append(path)
    return ours


def _command(unix_socket: str, base_url: str) -> list[str]:
    prefix = base_url.rstrip("/") + "/" + PROXY_NAME
    return _escape(
        [
            sys.executable,
            "-m",
            "oraculo.extensions.panels.serve",  # panel serve, leaving out what it never runs
            *(str(p) for p in app_paths()),
            "--unix-socket",
            unix_socket,
            "--prefix",
            prefix,
            # jupyter-server-proxy has already checked the Origin of the websocket against the Host
            # (jupyter_server's check_origin) and it is the only way in, so Bokeh need not know the
            # public host name, which it cannot learn here.
            "--allow-websocket-origin",
            "*",
            # Our icons and style sheets, at <prefix>/oraculo/ (see ``static_url``).
            "--static-dirs",
            f"oraculo={STATIC_DIR}",
            "--exclude-headers",
            *_CREDENTIAL_HEADERS,
            "--log-level",
            "warning",
        ]
    )


def _environment() -> dict[str, str]:
    env = {
        # Every script and style sheet from this server, never a CDN (the hub may be offline).
        "BOKEH_RESOURCES": "server",
        "BOKEH_MINIFIED": "true",
    }
    env.update(server_connection())
    return _escape(env)


def server_connection() -> dict[str, str]:
    """Where and how the panels reach this Jupyter server's REST API (``/api/v1/status``).

    The panel server is a child of the Jupyter server, so it talks to it directly on loopback
    (or its Unix socket). Under JupyterHub it does so with a narrow token of its own, minted by
    the launcher (:mod:`oraculo.singleuser`): it reaches this server and nothing else, and opens
    no terminal and starts no kernel, since the panel server runs as the user's OS account, in
    reach of the user's kernels. Never the server's hub token. In a plain ``jupyter server``: the
    server's token.
    """
    from jupyter_server.serverapp import ServerApp

    panel = credentials.panel_token()
    under_hub = bool(os.environ.get("JUPYTERHUB_API_URL"))
    if not ServerApp.initialized():
        # Not started as a ServerApp (never so far): JupyterHub still says where the server is.
        url = os.environ.get("JUPYTERHUB_SERVICE_URL", "")
        token = panel.token if panel else ""
        return {"ORACULO_SERVER_URL": url, "ORACULO_SERVER_TOKEN": token} if url else {}
    app = ServerApp.instance()
    if under_hub:
        token = panel.token if panel else ""
    else:
        token = app.identity_provider.token or ""
    env = {"ORACULO_SERVER_TOKEN": token}
    if app.sock:
        env["ORACULO_SERVER_SOCKET"] = app.sock
        env["ORACULO_SERVER_URL"] = "http://localhost" + app.base_url
    else:
        scheme = "https" if app.certfile else "http"
        host = app.ip if app.ip not in ("", "0.0.0.0", "*", "localhost") else "127.0.0.1"
        if host == "::":
            host = "::1"
        if ":" in host:
            host = f"[{host}]"
        env["ORACULO_SERVER_URL"] = f"{scheme}://{host}:{app.port}{app.base_url}"
    return env


def _escape(value: Any) -> Any:
    # jupyter-server-proxy runs every string of the command and environment through
    # str.format(port=..., unix_socket=..., base_url=...), even what a callable returned.
    if isinstance(value, str):
        return value.replace("{", "{{").replace("}", "}}")
    if isinstance(value, list):
        return [_escape(v) for v in value]
    return {k: _escape(v) for k, v in value.items()}


#: Launcher tiles, one per panel app (``apps/<name>.py``), in launcher order.
TILES = {
    "workspace": "Workspace",
    "chat": "Chat",
    "memory": "Memory",
    "voice": "Voice",
    "backstage": "Backstage",
    "usage": "Usage",
}


@functools.cache
def _socket_path() -> str:
    # A fresh 0700 folder (mkdtemp), so no other local user can connect to the socket; short,
    # since a socket path may not be longer than ~100 bytes. Removed when the server exits.
    # Cached: every tile's entry points at the one panel server.
    folder = tempfile.mkdtemp(prefix="oraculo-panels-")
    atexit.register(shutil.rmtree, folder, ignore_errors=True)
    return os.path.join(folder, "socket")


#: The launcher section of the Oráculo tiles.
LAUNCHER_CATEGORY = "Oráculo"


def _launcher_entry(app: str) -> dict[str, Any]:
    icon = STATIC_DIR / f"{app}.svg"
    return {
        "enabled": (APPS_DIR / f"{app}.py").exists(),
        "title": TILES[app],
        "icon_path": str(icon if icon.exists() else STATIC_DIR / "workspace.svg"),
        "path_info": f"{PROXY_NAME}/{app}",
        # A launcher section of its own. JupyterLab's launcher shows an entry's icon only in
        # its kernel categories; Oráculo's lab extension (oraculo/labextension) shows these.
        "category": LAUNCHER_CATEGORY,
    }


def _common() -> dict[str, Any]:
    return {
        "unix_socket": _socket_path(),
        # Panel is told its full public prefix, so it must see the full path too.
        "absolute_url": True,
        "request_headers_override": {h: "" for h in _CREDENTIAL_HEADERS},
        "new_browser_tab": False,
    }


def setup_panels() -> dict[str, Any]:
    """The jupyter-server-proxy server entry (entry point ``jupyter_serverproxy_servers``) that
    starts the panel server; its launcher tile opens the Workspace panel."""
    return {
        **_common(),
        "command": _command,
        "environment": _environment,
        "timeout": START_TIMEOUT,
        "launcher_entry": _launcher_entry("workspace"),
    }


def _tile(app: str) -> dict[str, Any]:
    """A launcher tile for one more panel. jupyter-server-proxy gives each entry one tile, so
    each other panel has an entry of its own that starts nothing: its tile opens the panel on
    the one server that ``setup_panels`` starts (``path_info`` below ``oraculo-panels/``)."""
    return {**_common(), "launcher_entry": _launcher_entry(app)}


def setup_chat_tile() -> dict[str, Any]:
    return _tile("chat")


def setup_memory_tile() -> dict[str, Any]:
    return _tile("memory")


def setup_voice_tile() -> dict[str, Any]:
    return _tile("voice")


def setup_backstage_tile() -> dict[str, Any]:
    return _tile("backstage")


def setup_usage_tile() -> dict[str, Any]:
    return _tile("usage")


#: The Cohort panel's tile: shown only in the servers of a cohort's instructors (the spawner
#: names the cohorts a user teaches in ORACULO_INSTRUCTS); students reach the panel by URL.
COHORT_TILE = "Cohort"


def setup_cohort_tile() -> dict[str, Any]:
    entry = {**_common(), "launcher_entry": {**_launcher_entry("usage"), "title": COHORT_TILE}}
    entry["launcher_entry"]["path_info"] = f"{PROXY_NAME}/cohort"
    entry["launcher_entry"]["icon_path"] = str(STATIC_DIR / "cohort.svg")
    entry["launcher_entry"]["enabled"] = bool(os.environ.get("ORACULO_INSTRUCTS"))
    return entry


#: The operator's dashboard's tile: shown only to users who may read everyone's usage (the
#: scope the dashboard needs); it opens the hub service ``usage-dashboard`` in a new tab.
DASHBOARD_TILE = "Operator's dashboard"
DASHBOARD_SCOPE = "custom:oraculo:usage:read-all"
DASHBOARD_PATH = "services/usage-dashboard/"


def owner_holds(scope: str) -> bool:
    """Whether this server's owner holds ``scope``: the hub answers ``GET /hub/api/user`` to the
    server's token with that token's scopes, which the hub keeps to what the owner holds (the
    server token asks for the usage read-all scope: oraculo.hub.config.SERVER_TOKEN_SCOPES).
    False outside JupyterHub or when the hub does not answer (logged)."""
    hub = credentials.HubTokens.from_environment()
    if hub is None:
        return False
    try:
        r = httpx.get(
            f"{hub.api_url}/user", headers={"Authorization": f"token {hub.api_token}"}, timeout=5
        )
        r.raise_for_status()
    except httpx.HTTPError as e:
        _log.warning("could not read this server's scopes from the hub: %s", e)
        return False
    return scope in (r.json().get("scopes") or [])


def _dashboard_path_info() -> str:
    """The dashboard's address relative to this server's base URL (``/user/<name>/``): up to
    the hub's base URL, then the service's path."""
    base = os.environ.get("JUPYTERHUB_BASE_URL", "/")
    prefix = os.environ.get("JUPYTERHUB_SERVICE_PREFIX", base)
    inner = prefix[len(base) :] if prefix.startswith(base) else prefix.lstrip("/")
    depth = len([p for p in inner.split("/") if p])
    return "../" * depth + DASHBOARD_PATH


def setup_dashboard_tile() -> dict[str, Any]:
    entry = {**_common(), "new_browser_tab": True}
    entry["launcher_entry"] = {
        **_launcher_entry("usage"),
        "title": DASHBOARD_TILE,
        "path_info": _dashboard_path_info(),
        "icon_path": str(STATIC_DIR / "dashboard.svg"),
        "enabled": owner_holds(DASHBOARD_SCOPE),
    }
    return entry
