"""The MCP servers a user configured, and the client agents use their tools through.

The user adds a server (name, URL, optional bearer token) with ``POST /api/v1/mcp/servers``. The
name and URL go in ``~/.oraculo/mcp/servers.json``; the bearer token goes to the model service's
secret store (:mod:`oraculo.models.secrets`) with the server's own credential, which no kernel
holds: the user's code can read the home, so the token is never written there, never answered
back by the API, and never given to a kernel. The server fetches it when it connects.

Agents name the servers whose tools they may use in their notebook's metadata
(``"mcp": ["ledger"]``); their tools then appear to the agent as ``<server>__<tool>`` and run
here, in the server, through the official MCP client (streamable HTTP), not in the kernel.
"""

from __future__ import annotations

import asyncio
import importlib
import json
import os
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any

from traitlets import Any as AnyTrait
from traitlets import Float, Unicode, default
from traitlets.config import LoggingConfigurable

from oraculo.extensions.base.errors import BadRequest, NotFound, OraculoError, Unavailable
from oraculo.extensions.base.modelclient import ModelClient
from oraculo.extensions.mcp.models import MCPServerInfo, MCPServerRequest, MCPToolInfo

if TYPE_CHECKING:  # the MCP SDK (~25 MB of a server's memory) loads with the first session
    from mcp import ClientSession

#: Between a server's name and its tool's in the names agents see.
SEP = "__"


class MCPServers(LoggingConfigurable):
    """The user's configured MCP servers: the list, their secrets, their tools."""

    path = Unicode(
        help="Where the servers (name, URL; no secret) are listed. Default "
        "~/.oraculo/mcp/servers.json."
    ).tag(config=True)
    timeout = Float(60.0, help="Seconds a call to a configured MCP server may take.").tag(
        config=True
    )
    models = AnyTrait(help="The extension's model-service client (keeps the bearer tokens).")

    @default("path")
    def _default_path(self) -> str:
        return os.path.join(os.path.expanduser("~"), ".oraculo", "mcp", "servers.json")

    def _load(self) -> dict[str, dict[str, Any]]:
        try:
            data = json.loads(Path(self.path).read_text())
        except FileNotFoundError:
            return {}
        except ValueError:
            self.log.warning("%s is not valid JSON; no MCP servers configured", self.path)
            return {}
        return data if isinstance(data, dict) else {}

    def _save(self, data: dict[str, dict[str, Any]]) -> None:
        path = Path(self.path)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.{os.getpid()}")
        tmp.write_text(json.dumps(data, indent=1))
        os.replace(tmp, path)

    def _secrets(self) -> ModelClient:
        if not isinstance(self.models, ModelClient) or not self.models.configured:
            raise Unavailable(
                "Bearer tokens are kept by the model service, and none is configured here."
            )
        return self.models

    def servers(self) -> list[MCPServerInfo]:
        return [MCPServerInfo(name=k, **v) for k, v in sorted(self._load().items())]

    async def add(self, req: MCPServerRequest) -> tuple[MCPServerInfo, bool]:
        data = self._load()
        created = req.name not in data
        secret = f"v1/secrets/mcp:{req.name}"
        if req.bearer_token is not None:
            await self._secrets().request("PUT", secret, json={"value": req.bearer_token})
        elif data.get(req.name, {}).get("has_token"):
            await self._secrets().request("DELETE", secret)
        info = MCPServerInfo(
            name=req.name,
            url=req.url,
            description=req.description,
            has_token=req.bearer_token is not None,
        )
        data[req.name] = info.model_dump(exclude={"name"})
        self._save(data)
        return info, created

    async def delete(self, name: str) -> None:
        data = self._load()
        if name not in data:
            raise NotFound(f"No MCP server named {name!r}")
        if data.pop(name).get("has_token"):
            try:
                await self._secrets().request("DELETE", f"v1/secrets/mcp:{name}")
            except OraculoError as e:
                if getattr(e, "status", 0) != 404:
                    raise
        self._save(data)

    def _get(self, name: str) -> MCPServerInfo:
        data = self._load()
        if name not in data:
            raise NotFound(f"No MCP server named {name!r}")
        return MCPServerInfo(name=name, **data[name])

    @asynccontextmanager
    async def session(self, name: str) -> AsyncIterator[ClientSession]:
        """A connected, initialised client session with the configured server ``name``."""
        info = self._get(name)
        headers = {}
        if info.has_token:
            r = await self._secrets().request("GET", f"v1/secrets/mcp:{name}")
            headers["Authorization"] = f"Bearer {r.json()['value']}"
        await asyncio.to_thread(importlib.import_module, "mcp.client.streamable_http")  # ~1 s once
        import httpx2
        from mcp import ClientSession
        from mcp.client.streamable_http import streamable_http_client

        timeout = httpx2.Timeout(self.timeout, connect=10)
        try:
            async with (
                httpx2.AsyncClient(headers=headers, timeout=timeout, trust_env=False) as http,
                streamable_http_client(info.url, http_client=http) as (read, write),
                ClientSession(read, write, read_timeout_seconds=self.timeout) as session,
            ):
                await session.initialize()
                yield session
        except OraculoError:
            raise
        except BaseException as e:  # the SDK's task groups raise exception groups
            if isinstance(e, asyncio.CancelledError | KeyboardInterrupt | SystemExit):
                raise
            raise Unavailable(f"MCP server {name!r} ({info.url}) failed: {_first(e)}") from e

    async def tools(self, name: str) -> list[MCPToolInfo]:
        async with self.session(name) as s:
            listed = (await s.list_tools()).tools
        return [
            MCPToolInfo(name=t.name, description=t.description or "", input_schema=t.input_schema)
            for t in listed
        ]

    async def openai_tools(self, names: list[str]) -> list[dict[str, Any]]:
        """The tools of servers ``names`` as OpenAI function tools named ``<server>__<tool>``;
        a server that does not answer is logged and left out."""
        out = []
        for name in names:
            try:
                tools = await self.tools(name)
            except OraculoError as e:
                self.log.warning("MCP server %s left out of an agent's tools: %s", name, e)
                continue
            for t in tools:
                out.append(
                    {
                        "type": "function",
                        "function": {
                            "name": f"{name}{SEP}{t.name}"[:64],
                            "description": t.description[:1024],
                            "parameters": t.input_schema or {"type": "object", "properties": {}},
                        },
                    }
                )
        return out

    async def call(self, qualified: str, args: dict[str, Any]) -> tuple[str, bool]:
        """Call ``<server>__<tool>``; (its text, whether it is an error)."""
        name, sep, tool = qualified.partition(SEP)
        if not sep:
            raise BadRequest(f"{qualified!r} is not an MCP tool")
        async with self.session(name) as s:
            r = await s.call_tool(tool, args)
        text = "\n".join(getattr(c, "text", "") for c in r.content if getattr(c, "text", ""))
        if not text and r.structured_content is not None:
            text = json.dumps(r.structured_content)
        return text, bool(r.is_error)


def _first(e: BaseException) -> str:
    while isinstance(e, BaseExceptionGroup) and e.exceptions:
        e = e.exceptions[0]
    return f"{type(e).__name__}: {e}"
