"""The MCP feature: the user's workspace as an MCP server at ``/oraculo/mcp``.

An assistant outside the workspace (an IDE, a desktop assistant) connects with MCP's
streamable HTTP transport and the user's hub token, and gets tools that run code in the user's
kernel, search their memories and workspace, read and write files and notebooks, and list and
start agents (:mod:`oraculo.extensions.mcp.service`). The tools use the execute, memory and
agents features' services, handed over at connect time.

It is also the client side: the MCP servers the user configures (``/api/v1/mcp/servers``,
:mod:`oraculo.extensions.mcp.client`), whose tools agents may call.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from traitlets import Instance, Type

from oraculo.extensions.base.feature import Feature
from oraculo.extensions.mcp.client import MCPServers
from oraculo.extensions.mcp.handlers import (
    MCPHandler,
    ServerHandler,
    ServersHandler,
    ServerToolsHandler,
)
from oraculo.extensions.mcp.service import WorkspaceMCP


class MCPFeature(Feature):
    """The workspace's MCP server."""

    name = "mcp"

    service_class = Type(
        WorkspaceMCP, klass=WorkspaceMCP, config=True, help="The MCP server of the workspace."
    )
    service = Instance(WorkspaceMCP)
    client = Instance(MCPServers, help="The MCP servers the user configured (for agents).")

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        ext = self.extension
        app = ext.serverapp
        self.service = self.service_class(
            parent=self, owner=ext.owner, contents=app.contents_manager
        )
        self.client = MCPServers(parent=self, models=self.models)

    def connect(self, features: Mapping[str, Feature]) -> None:
        service = self.service
        service.execute = getattr(features.get("execute"), "service", None)
        service.memories = getattr(features.get("memory"), "memories", None)
        service.index = getattr(features.get("memory"), "index", None)
        service.agents = getattr(features.get("agents"), "service", None)

    def handlers(self) -> list[tuple[str, Any]]:
        name = r"([A-Za-z0-9_-]{1,32})"
        return [
            (r"/oraculo/mcp", MCPHandler),
            (r"/api/v1/mcp/servers", ServersHandler),
            (rf"/api/v1/mcp/servers/{name}", ServerHandler),
            (rf"/api/v1/mcp/servers/{name}/tools", ServerToolsHandler),
        ]

    async def stop(self) -> None:
        await self.service.stop()
