"""The narrow credentials a kernel and the panel server get instead of the server's hub token.

Under JupyterHub the user server's token (``JUPYTERHUB_API_TOKEN``) may mint the user's tokens
(scope ``tokens!user``, see :data:`oraculo.hub.config.SERVER_TOKEN_SCOPES`). It stays in the
server process alone: the launcher (:mod:`oraculo.singleuser`) takes it out of the environment
before any child starts and keeps it here (:func:`hold_server_token`, :func:`server_token`).

For each kernel the provisioner mints a token that expires and may only reach this user's server
and the model service: ``ORACULO_KERNEL_TOKEN``. The panel server gets one of its own that may
only reach this user's server (:data:`PANEL_TOKEN_SCOPES`). Every token minted here is *narrow*
(:func:`is_narrow`): the server's authorizer (:mod:`oraculo.kernels.authorizer`) refuses it
terminals and starting or stopping kernels, and its scopes hold no ``tokens`` or ``servers``, so
the hub refuses it minting tokens. Outside JupyterHub there is nothing to mint from, and the
kernel gets no token at all.
"""

from __future__ import annotations

import ctypes
import datetime as dt
import hashlib
import os
import threading
import time
from dataclasses import dataclass
from typing import Any

import httpx

#: What a kernel's token may do: reach its own user's server and the model service.
KERNEL_TOKEN_SCOPES = ["access:servers!server={user}/", "access:services!service=models"]
#: What the panel server's token may do: reach its own user's server (no more than a kernel's).
PANEL_TOKEN_SCOPES = ["access:servers!server={user}/"]

#: Environment variables that carry the server's hub token (JPY_API_TOKEN: its old name).
SERVER_TOKEN_ENV = ("JUPYTERHUB_API_TOKEN", "JPY_API_TOKEN")

#: Notes of the narrow tokens minted here (a kernel's note goes on with its kernel id).
NARROW_NOTES = ("oraculo kernel", "oraculo panel")

_server_token: str | None = None
_panel_token: KernelToken | None = None
_panel_ready = threading.Event()
_panel_ready.set()
#: sha256 of every narrow token this server minted and has not revoked.
_narrow: set[str] = set()


def hold_server_token() -> str:
    """Take the server's hub token out of the environment (so no child process inherits it)
    and out of the process's initial environment block (``/proc/<pid>/environ``), and keep it
    here; returns it. Idempotent."""
    global _server_token
    token = ""
    for name in SERVER_TOKEN_ENV:
        token = os.environ.pop(name, "") or token
    scrub_initial_environment(SERVER_TOKEN_ENV)
    if _server_token is None or token:
        _server_token = token
    return _server_token


def scrub_initial_environment(names: tuple[str, ...]) -> int:
    """Overwrite ``NAME=value`` of each of ``names`` in this process's initial environment block
    with underscores (an entry without ``=``, which readers skip; NUL bytes would end the block
    for them); returns how many were found.

    ``/proc/<pid>/environ`` shows that block as it was at ``exec``, whatever ``os.environ`` says
    since, to every process allowed to read it (one of the same account where the process is
    dumpable; a root process, even without ``CAP_SYS_PTRACE``, on some kernels). ``unsetenv``
    has already dropped the C library's pointers to these strings, so nothing reads them again.
    """
    try:
        with open("/proc/self/stat", "rb") as f:
            fields = f.read().rsplit(b")", 1)[1].split()
        start, end = int(fields[47]), int(fields[48])  # env_start, env_end: fields 50 and 51
    except (OSError, IndexError, ValueError):
        return 0
    if not 0 < start < end:
        return 0
    block = ctypes.string_at(start, end - start)
    found = 0
    offset = 0
    for entry in block.split(b"\0"):
        name = entry.split(b"=", 1)[0].decode(errors="replace")
        if name in names and b"=" in entry:
            ctypes.memset(start + offset, ord("_"), len(entry))
            found += 1
        offset += len(entry) + 1
    return found


def server_token() -> str:
    """The server's hub token: held by :func:`hold_server_token`, else from the environment."""
    if _server_token is not None:
        return _server_token
    return os.environ.get("JUPYTERHUB_API_TOKEN", "")


def minting_panel_token() -> None:
    """Say that the panel server's token is being minted (in the launcher's thread):
    :func:`panel_token` waits for :func:`hold_panel_token`."""
    _panel_ready.clear()


def hold_panel_token(token: KernelToken | None) -> None:
    """Keep the panel server's token, minted by the launcher, for the panel proxy (None: it
    could not be minted)."""
    global _panel_token
    _panel_token = token
    _panel_ready.set()


def panel_token(wait: float = 10.0) -> KernelToken | None:
    """The panel server's narrow token, where the launcher minted one (waiting up to ``wait``
    seconds for a mint under way: the panel server starts at the first panel request)."""
    _panel_ready.wait(wait)
    return _panel_token


def _digest(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


def is_narrow(token: str) -> bool:
    """Whether ``token`` is a kernel's or the panel server's, minted by this server."""
    return bool(token) and _digest(token) in _narrow


@dataclass
class KernelToken:
    token: str
    id: str
    expires_at: float

    def fresh(self, margin: float) -> bool:
        return self.expires_at - time.time() > margin


class HubTokens:
    """Mints and revokes the user's kernel tokens through the hub API."""

    def __init__(self, api_url: str, api_token: str, user: str, timeout: float = 10.0) -> None:
        self.api_url = api_url.rstrip("/")
        self.api_token = api_token
        self.user = user
        self.timeout = timeout

    @classmethod
    def from_environment(cls) -> HubTokens | None:
        """The hub this server belongs to, or None outside JupyterHub."""
        url = os.environ.get("JUPYTERHUB_API_URL", "")
        token = server_token()
        user = os.environ.get("JUPYTERHUB_USER", "")
        if not (url and token and user):
            return None
        return cls(url, token, user)

    def _headers(self) -> dict[str, str]:
        return {"Authorization": f"token {self.api_token}"}

    def _mint_request(
        self, expires_in: int, note: str, scopes: list[str]
    ) -> tuple[str, dict[str, Any]]:
        body: dict[str, Any] = {
            "note": note,
            "expires_in": expires_in,
            "scopes": [s.format(user=self.user) for s in scopes],
        }
        return f"{self.api_url}/users/{self.user}/tokens", body

    def _minted(self, r: httpx.Response, expires_in: int) -> KernelToken:
        r.raise_for_status()
        data = r.json()
        _narrow.add(_digest(data["token"]))
        return KernelToken(data["token"], str(data["id"]), time.time() + expires_in)

    async def mint(
        self, expires_in: int, note: str, scopes: list[str] = KERNEL_TOKEN_SCOPES
    ) -> KernelToken:
        """A new narrow token of this user (a kernel's, by default)."""
        url, body = self._mint_request(expires_in, note, scopes)
        async with httpx.AsyncClient(timeout=self.timeout, trust_env=False) as client:
            r = await client.post(url, json=body, headers=self._headers())
        return self._minted(r, expires_in)

    def mint_sync(
        self, expires_in: int, note: str, scopes: list[str] = KERNEL_TOKEN_SCOPES
    ) -> KernelToken:
        """:meth:`mint` for callers that run before the event loop does (the launcher)."""
        url, body = self._mint_request(expires_in, note, scopes)
        with httpx.Client(timeout=self.timeout, trust_env=False) as client:
            r = client.post(url, json=body, headers=self._headers())
        return self._minted(r, expires_in)

    def revoke_stale_sync(self, before: float) -> int:
        """Revoke the user's narrow tokens made before ``before`` (unix time: when this server
        started), left by an earlier server: kernels outlive a server that is killed, and this
        server would not know their tokens for narrow. Returns how many."""
        base = f"{self.api_url}/users/{self.user}/tokens"
        revoked = 0
        with httpx.Client(timeout=self.timeout, trust_env=False) as client:
            r = client.get(base, headers=self._headers())
            r.raise_for_status()
            for token in r.json().get("api_tokens", []):
                if not str(token.get("note") or "").startswith(NARROW_NOTES):
                    continue
                try:
                    created = dt.datetime.fromisoformat(str(token["created"]))
                except (KeyError, ValueError):
                    continue
                if created.tzinfo is None:
                    created = created.replace(tzinfo=dt.UTC)
                if created.timestamp() < before:
                    d = client.delete(f"{base}/{token['id']}", headers=self._headers())
                    revoked += d.status_code == 204
        return revoked

    async def revoke(self, token: KernelToken) -> None:
        async with httpx.AsyncClient(timeout=self.timeout, trust_env=False) as client:
            r = await client.delete(
                f"{self.api_url}/users/{self.user}/tokens/{token.id}", headers=self._headers()
            )
        if r.status_code not in (204, 404):
            r.raise_for_status()
        _narrow.discard(_digest(token.token))


def server_url() -> str:
    """This Jupyter server's own URL (with its base_url) as a local kernel reaches it."""
    from jupyter_server.serverapp import ServerApp

    # Not ``ServerApp.initialized()``: in another Jupyter application (nbgrader's autograde
    # starts this kernel) that application is the singleton every Application class inherits.
    if not isinstance(getattr(ServerApp, "_instance", None), ServerApp):
        return os.environ.get("JUPYTERHUB_SERVICE_URL", "")
    app = ServerApp.instance()
    if app.sock:
        return ""  # a Unix socket: no URL to give
    scheme = "https" if app.certfile else "http"
    host = app.ip if app.ip not in ("", "0.0.0.0", "*", "localhost") else "127.0.0.1"
    if host == "::":
        host = "::1"
    if ":" in host:
        host = f"[{host}]"
    return f"{scheme}://{host}:{app.port}{app.base_url}"
