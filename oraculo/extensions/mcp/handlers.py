"""``/oraculo/mcp``: the MCP endpoint (streamable HTTP), passed to the SDK's ASGI app; and
``/api/v1/mcp/servers``: the MCP servers the user configured for their agents.

The handler authenticates and authorizes like every other API of the server (the user's hub
token, ``Authorization: Bearer <token>`` or ``token <token>``; another user's token, or none, is
refused before the SDK sees the request), then hands the request to the SDK as an ASGI call and
writes what it answers, flushing each chunk (an SSE stream, when the SDK answers with one).
"""

from __future__ import annotations

import asyncio
from typing import Any

from jupyter_server.auth.decorator import authorized
from tornado import web

from oraculo.extensions.base.handlers import OraculoAPIHandler
from oraculo.extensions.mcp.models import ACTOR_KEY, MCPServerInfo, MCPServerRequest, MCPToolInfo
from oraculo.openapi import operation


class MCPHandler(OraculoAPIHandler):
    """``POST`` / ``GET`` / ``DELETE /oraculo/mcp``: MCP's streamable HTTP transport."""

    def initialize(self) -> None:
        self._gone = asyncio.Event()

    def on_connection_close(self) -> None:
        self._gone.set()

    def check_xsrf_cookie(self) -> None:
        # MCP clients send the hub token in a header, never a cookie; a cookie-only request is
        # not authenticated for POST (jupyter_server refuses it its XSRF check) anyway.
        if not getattr(self, "_token_authenticated", False):
            super().check_xsrf_cookie()

    @web.authenticated
    @authorized
    async def post(self) -> None:
        await self._asgi()

    @web.authenticated
    @authorized
    async def get(self) -> None:
        await self._asgi()

    @web.authenticated
    @authorized
    async def delete(self) -> None:
        await self._asgi()

    async def _asgi(self) -> None:
        req = self.request
        host, _, port = (req.host or "127.0.0.1").partition(":")
        scope: dict[str, Any] = {
            "type": "http",
            "asgi": {"version": "3.0"},
            "http_version": "1.1",
            "method": req.method,
            "scheme": req.protocol,
            "path": req.path,
            "raw_path": req.path.encode(),
            "query_string": (req.query or "").encode(),
            "root_path": "",
            "headers": [
                (k.lower().encode("latin-1"), v.encode("latin-1")) for k, v in req.headers.get_all()
            ],
            "client": (req.remote_ip, 0),
            "server": (host, int(port or 80)),
            "state": {},
            ACTOR_KEY: self.current_user.username,
        }
        sent_body = False
        finished = False

        async def receive() -> dict[str, Any]:
            nonlocal sent_body
            if not sent_body:
                sent_body = True
                return {"type": "http.request", "body": req.body or b"", "more_body": False}
            await self._gone.wait()
            return {"type": "http.disconnect"}

        async def send(message: dict[str, Any]) -> None:
            nonlocal finished
            if finished or self._gone.is_set():
                return
            if message["type"] == "http.response.start":
                self.set_status(message["status"])
                self.clear_header("Content-Type")
                for key, value in message.get("headers", []):
                    self.add_header(key.decode("latin-1"), value.decode("latin-1"))
            elif message["type"] == "http.response.body":
                self.write(message.get("body", b""))
                if message.get("more_body"):
                    await self.flush()
                else:
                    finished = True

        service = await self.feature("mcp").ready()
        await service.handle(scope, receive, send)
        if not self._finished:
            # APIHandler.finish would relabel the body application/json.
            web.RequestHandler.finish(self)


class ServersHandler(OraculoAPIHandler):
    """``GET /api/v1/mcp/servers`` (no secret in it); ``POST`` one (201 new, 200 replaced)."""

    @operation(
        summary="The MCP servers this user configured (no secret in it).",
        responses={200: dict[str, list[MCPServerInfo]]},
    )
    @web.authenticated
    @authorized
    async def get(self) -> None:
        servers = self.feature("mcp").client.servers()
        self.finish({"servers": [s.model_dump() for s in servers]})

    @operation(
        summary="Add or replace an MCP server (201 new, 200 replaced).",
        request=MCPServerRequest,
        responses={200: MCPServerInfo, 201: MCPServerInfo},
    )
    @web.authenticated
    @authorized
    async def post(self) -> None:
        body = self.parse_body(MCPServerRequest)
        info, created = await self.feature("mcp").client.add(body)
        if created:
            self.set_status(201)
            self.set_header("Location", f"{self.base_url}api/v1/mcp/servers/{info.name}")
        self.finish(info.model_dump())


class ServerHandler(OraculoAPIHandler):
    """``DELETE /api/v1/mcp/servers/{name}`` (204, its token forgotten too)."""

    @operation(summary="Remove an MCP server and forget its token.", responses={204: None})
    @web.authenticated
    @authorized
    async def delete(self, name: str) -> None:
        await self.feature("mcp").client.delete(name)
        self.set_status(204)
        self.finish()


class ServerToolsHandler(OraculoAPIHandler):
    """``GET /api/v1/mcp/servers/{name}/tools``: connect and list the server's tools."""

    @operation(
        summary="Connect to an MCP server and list its tools.",
        responses={200: dict[str, list[MCPToolInfo]]},
    )
    @web.authenticated
    @authorized
    async def get(self, name: str) -> None:
        tools = await self.feature("mcp").client.tools(name)
        self.finish({"tools": [t.model_dump() for t in tools]})
