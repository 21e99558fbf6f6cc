"""The agents feature: ``/api/v1/agents`` (catalogue and runs) and the agents service.

Runs call the model service with this server's hub token (like chat) and run tools through the
execute feature's service. Runs left going by a previous server resume at start.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import Any

from traitlets import Instance, Type

from oraculo.extensions.agents.chat import AGENT_MODEL_PREFIX, chat_reply
from oraculo.extensions.agents.handlers import (
    AgentHandler,
    AgentsHandler,
    PublishHandler,
    RunCancelHandler,
    RunEventsHandler,
    RunHandler,
    RunMessagesHandler,
    RunNotebookHandler,
    RunsHandler,
    RunShareHandler,
    SharedRunHandler,
    SharedRunsHandler,
)
from oraculo.extensions.agents.notebook import plugin_tools
from oraculo.extensions.agents.service import AgentsService
from oraculo.extensions.base.feature import Feature

_RUN = r"([0-9a-f]{32})"


class AgentsFeature(Feature):
    """Agent notebooks, multi-agent runs and their events."""

    name = "agents"

    service_class = Type(
        AgentsService, klass=AgentsService, config=True, help="The service that runs agents."
    )
    service = Instance(AgentsService)

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        ext = self.extension
        app = ext.serverapp
        assert self.models is not None
        self._execute: Any = None
        self.service = self.service_class(
            parent=self,
            root_dir=app.root_dir,
            user=os.environ.get("JUPYTERHUB_USER", ""),
            models=self.models,
            execute=lambda: self._execute,
        )
        self.service.plugin_tools = plugin_tools(self.log)
        try:  # a new user finds the example agents in ~/agents
            self.service.copy_examples()
        except OSError as e:
            self.log.warning("Could not copy the example agents: %s", e)
        # runs left going by the last server resume once the server's loop runs
        io_loop = getattr(app, "io_loop", None)
        if io_loop is not None:
            io_loop.add_callback(self.service.resume_all)

    def connect(self, features: Mapping[str, Feature]) -> None:
        # tools run through the execute feature's service, in the user's sandboxed kernels
        self._execute = getattr(features.get("execute"), "service", None)
        # tools of the MCP servers the user configured, called from this server
        self.service.mcp_servers = getattr(features.get("mcp"), "client", None)
        chat: Any = features.get("chat")
        if chat is not None:
            chat.service.register_responder(AGENT_MODEL_PREFIX, self._chat_reply)

    async def _chat_reply(self, model: str, messages: list[dict[str, Any]]) -> Any:
        """``model: "agent:<name>"`` in chat: a run of that agent answers."""
        return await chat_reply(self.service, model, messages, self.service.user)

    def handlers(self) -> list[tuple[str, Any]]:
        return [
            (r"/api/v1/agents", AgentsHandler),
            (r"/api/v1/agents/runs", RunsHandler),
            (rf"/api/v1/agents/runs/{_RUN}", RunHandler),
            (rf"/api/v1/agents/runs/{_RUN}/events", RunEventsHandler),
            (rf"/api/v1/agents/runs/{_RUN}/messages", RunMessagesHandler),
            (rf"/api/v1/agents/runs/{_RUN}/cancel", RunCancelHandler),
            (rf"/api/v1/agents/runs/{_RUN}/notebook", RunNotebookHandler),
            (rf"/api/v1/agents/runs/{_RUN}/share", RunShareHandler),
            (r"/api/v1/agents/shared-runs", SharedRunsHandler),
            (rf"/api/v1/agents/shared-runs/{_RUN}", SharedRunHandler),
            (r"/api/v1/agents/([A-Za-z0-9_.-]{1,64})", AgentHandler),
            (r"/api/v1/agents/([A-Za-z0-9_.-]{1,64})/publish", PublishHandler),
        ]

    async def stop(self) -> None:
        await self.service.stop()
