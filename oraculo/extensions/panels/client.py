"""How every panel reaches its user's server: the server's own credential, over loopback.

``proxy.py`` starts the panel server with ``ORACULO_SERVER_URL`` (loopback URL including the
base URL), ``ORACULO_SERVER_TOKEN`` and, where the server listens on one, ``ORACULO_SERVER_SOCKET``.
Each panel's client is a :class:`ServerClient` with the API path it uses.
"""

from __future__ import annotations

import os
from typing import Any, Self

import httpx

from oraculo.extensions.base.wire import read_error


class ServerAPIError(Exception):
    """The server refused or failed; the message is safe to show."""


class ServerClient:
    """Calls ``<server>/<path>`` with the server's own credential."""

    #: The API below the server URL that this client calls ("" for the server root).
    path = ""
    #: Seconds to wait for an answer.
    timeout = 30.0
    #: The exception :meth:`request` raises.
    error: type[ServerAPIError] = ServerAPIError

    def __init__(
        self,
        server_url: str,
        token: str = "",
        unix_socket: str = "",
        timeout: float | None = None,
    ) -> None:
        self.base = server_url.rstrip("/") + "/" + self.path
        self.token = token
        self.unix_socket = unix_socket
        if timeout is not None:
            self.timeout = timeout

    @classmethod
    def from_environment(cls) -> Self:
        """As configured by jupyter-server-proxy (``ORACULO_SERVER_*``, set in ``proxy.py``)."""
        url = os.environ.get("ORACULO_SERVER_URL", "")
        if not url:
            raise RuntimeError("ORACULO_SERVER_URL is not set: start panels through the server")
        return cls(
            url,
            token=os.environ.get("ORACULO_SERVER_TOKEN", ""),
            unix_socket=os.environ.get("ORACULO_SERVER_SOCKET", ""),
        )

    def connect(self) -> httpx.AsyncClient:
        """A client for one exchange (use it in ``async with``)."""
        transport = httpx.AsyncHTTPTransport(uds=self.unix_socket) if self.unix_socket else None
        return httpx.AsyncClient(
            headers={"Authorization": f"token {self.token}"} if self.token else {},
            timeout=httpx.Timeout(self.timeout, connect=min(self.timeout, 10.0)),
            transport=transport,
            verify=False,  # loopback: the server's certificate is for its public name
            trust_env=False,
        )

    def error_message(self, status: int, content: bytes) -> str:
        """What to show for an error answer: its envelope's message."""
        return read_error(status, content).message

    async def request(self, method: str, path: str = "", **kw: Any) -> Any:
        """``method`` on ``<base><path>``; the decoded JSON answer, None when empty."""
        try:
            async with self.connect() as client:
                r = await client.request(method, self.base + path, **kw)
        except httpx.HTTPError as e:
            raise self.error(f"The server did not answer ({type(e).__name__}).") from e
        if r.status_code >= 400:
            raise self.error(self.error_message(r.status_code, r.content))
        return r.json() if r.content else None
