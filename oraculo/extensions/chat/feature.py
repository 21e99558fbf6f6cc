"""The chat feature: ``/api/v1/chat`` on the model service, with the workspace as context."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from traitlets import Instance, Type

from oraculo.extensions.base.feature import Feature
from oraculo.extensions.chat.cells import CellInserter
from oraculo.extensions.chat.context import ContextService, KernelInspector
from oraculo.extensions.chat.conversations import ConversationStore
from oraculo.extensions.chat.handlers import (
    CellsHandler,
    ChatCompletionsHandler,
    ChatModelsHandler,
    ConversationHandler,
    ConversationsHandler,
    NotebooksHandler,
)
from oraculo.extensions.chat.notebooks import NotebookSessions
from oraculo.extensions.chat.service import ChatService


class ChatFeature(Feature):
    """Chat completions, context assembly and the user's stored conversations."""

    name = "chat"

    service_class = Type(
        ChatService, klass=ChatService, config=True, help="The service that answers chats."
    )
    context_class = Type(
        ContextService,
        klass=ContextService,
        config=True,
        help="The service that assembles what is sent to the model.",
    )
    conversations_class = Type(
        ConversationStore,
        klass=ConversationStore,
        config=True,
        help="Where conversations are kept (default: SQLite in ~/.oraculo).",
    )

    service = Instance(ChatService)
    context = Instance(ContextService)
    conversations = Instance(ConversationStore)
    notebooks = Instance(NotebookSessions)
    cells = Instance(CellInserter)

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        ext = self.extension
        assert self.models is not None
        self._memory: Feature | None = None
        self.conversations = self.conversations_class(parent=self)
        self.context = self.context_class(
            parent=self,
            memory=lambda: self._memory,
            contents_manager=ext.serverapp.contents_manager,
            kernel_summary=KernelInspector(ext.serverapp.kernel_manager).summary,
        )
        self.notebooks = NotebookSessions(
            parent=self,
            session_manager=ext.serverapp.session_manager,
            kernel_manager=ext.serverapp.kernel_manager,
        )
        self.cells = CellInserter(
            parent=self, event_logger=ext.serverapp.event_logger, notebooks=self.notebooks
        )
        self.service = self.service_class(
            parent=self,
            models=self.models,
            context=self.context,
            conversations=self.conversations,
            notebooks=self.notebooks,
        )

    def connect(self, features: Mapping[str, Feature]) -> None:
        # memories and workspace passages come from the memory feature, when it loaded
        self._memory = features.get("memory")

    def handlers(self) -> list[tuple[str, Any]]:
        return [
            (r"/api/v1/chat", ChatCompletionsHandler),
            (r"/api/v1/chat/completions", ChatCompletionsHandler),
            (r"/api/v1/chat/models", ChatModelsHandler),
            (r"/api/v1/chat/conversations", ConversationsHandler),
            (r"/api/v1/chat/conversations/([^/]+)", ConversationHandler),
            (r"/api/v1/chat/notebooks", NotebooksHandler),
            (r"/api/v1/chat/cells", CellsHandler),
        ]

    async def stop(self) -> None:
        self.conversations.close()
