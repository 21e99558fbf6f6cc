"""The narrow credential a kernel gets instead of the server's hub token.

Under JupyterHub the user server's token (``JUPYTERHUB_API_TOKEN``) may mint the user's tokens
(scope ``tokens!user``, see :data:`oraculo.hub.config.SERVER_TOKEN_SCOPES`). For each kernel the
provisioner mints one that expires, and may only reach this user's server and the model service:
``ORACULO_KERNEL_TOKEN``. Outside JupyterHub there is nothing to mint from, and the kernel gets
no token at all.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass
from typing import Any

import httpx

#: What a kernel's token may do: reach its own user's server and the model service.
KERNEL_TOKEN_SCOPES = ["access:servers!server={user}/", "access:services!service=models"]


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
        token = os.environ.get("JUPYTERHUB_API_TOKEN", "")
        user = os.environ.get("JUPYTERHUB_USER", "")
        if not (url and token and user):
            return None
        return cls(url, token, user)

    def _headers(self) -> dict[str, str]:
        return {"Authorization": f"token {self.api_token}"}

    async def mint(self, expires_in: int, note: str) -> KernelToken:
        body: dict[str, Any] = {
            "note": note,
            "expires_in": expires_in,
            "scopes": [s.format(user=self.user) for s in KERNEL_TOKEN_SCOPES],
        }
        async with httpx.AsyncClient(timeout=self.timeout, trust_env=False) as client:
            r = await client.post(
                f"{self.api_url}/users/{self.user}/tokens", json=body, headers=self._headers()
            )
        r.raise_for_status()
        data = r.json()
        return KernelToken(data["token"], str(data["id"]), time.time() + expires_in)

    async def revoke(self, token: KernelToken) -> None:
        async with httpx.AsyncClient(timeout=self.timeout, trust_env=False) as client:
            r = await client.delete(
                f"{self.api_url}/users/{self.user}/tokens/{token.id}", headers=self._headers()
            )
        if r.status_code not in (204, 404):
            r.raise_for_status()


def server_url() -> str:
    """This Jupyter server's own URL (with its base_url) as a local kernel reaches it."""
    from jupyter_server.serverapp import ServerApp

    if not ServerApp.initialized():
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
