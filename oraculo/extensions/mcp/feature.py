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

import asyncio
from collections.abc import Mapping
from typing import Any

from traitlets import DottedObjectName, Instance
from traitlets.utils.importstring import import_item

from oraculo.extensions.base.feature import Feature
from oraculo.extensions.mcp.client import MCPServers
from oraculo.extensions.mcp.handlers import (
    MCPHandler,
    ServerHandler,
    ServersHandler,
    ServerToolsHandler,
)


class MCPFeature(Feature):
    """The workspace's MCP server, built on its first request (see :attr:`service`)."""

    name = "mcp"

    # A dotted name rather than a Type trait: a Type trait imports its class when the feature
    # is made, and the MCP server SDK (with starlette, uvicorn and opentelemetry) holds ~25 MB
    # in every user's server, most of which never gets an MCP client (benchmarks/density.py).
    service_class = DottedObjectName(
        "oraculo.extensions.mcp.service.WorkspaceMCP",
        config=True,
        help="""The MCP server of the workspace, as the dotted name of a WorkspaceMCP
        subclass. It is imported and made on the first request to /oraculo/mcp.""",
    )
    client = Instance(MCPServers, help="The MCP servers the user configured (for agents).")

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.client = MCPServers(parent=self, models=self.models)
        # A WorkspaceMCP (typed Any: naming the class here would mean importing its module)
        self._service: Any = None
        self._features: Mapping[str, Feature] = {}

    @property
    def service(self) -> Any:
        """The workspace's MCP server (a WorkspaceMCP), made (and the SDK imported) on first
        use."""
        if self._service is None:
            ext = self.extension
            service = import_item(self.service_class)(
                parent=self, owner=ext.owner, contents=ext.serverapp.contents_manager
            )
            features = self._features
            service.execute = getattr(features.get("execute"), "service", None)
            service.memories = getattr(features.get("memory"), "memories", None)
            service.index = getattr(features.get("memory"), "index", None)
            service.agents = getattr(features.get("agents"), "service", None)
            self._service = service
        return self._service

    async def ready(self) -> Any:
        """:attr:`service`, its module (and the SDK, ~1 s) imported off the event loop the
        first time."""
        if self._service is None:
            await asyncio.to_thread(import_item, self.service_class)
        return self.service

    def connect(self, features: Mapping[str, Feature]) -> None:
        self._features = features

    def handlers(self) -> list[tuple[str, Any]]:
        name = r"([A-Za-z0-9_-]{1,32})"
        return [
            (r"/oraculo/mcp", MCPHandler),
            (r"/api/v1/mcp/servers", ServersHandler),
            (rf"/api/v1/mcp/servers/{name}", ServerHandler),
            (rf"/api/v1/mcp/servers/{name}/tools", ServerToolsHandler),
        ]

    async def stop(self) -> None:
        if self._service is not None:
            await self._service.stop()
