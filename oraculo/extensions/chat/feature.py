"""The chat feature: ``/api/v1/chat`` on the model service, with the workspace as context."""

from __future__ import annotations

import os
from typing import Any

from traitlets import Instance, Type

from oraculo.extensions.base.feature import Feature
from oraculo.extensions.base.modelclient import ModelClient
from oraculo.extensions.chat.context import ContextService, KernelInspector
from oraculo.extensions.chat.conversations import ConversationStore
from oraculo.extensions.chat.handlers import (
    ChatCompletionsHandler,
    ChatModelsHandler,
    ConversationHandler,
    ConversationsHandler,
)
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
    models = Instance(ModelClient)
    context = Instance(ContextService)
    conversations = Instance(ConversationStore)

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        ext = self.extension
        self.models = ModelClient(
            parent=self,
            models_url=ext.models_url,
            token=os.environ.get("JUPYTERHUB_API_TOKEN", ""),
        )
        self.conversations = self.conversations_class(parent=self)
        self.context = self.context_class(
            parent=self,
            memory=lambda: ext.loaded.get("memory"),
            contents_manager=ext.serverapp.contents_manager,
            kernel_summary=KernelInspector(ext.serverapp.kernel_manager).summary,
        )
        self.service = self.service_class(
            parent=self,
            models=self.models,
            context=self.context,
            conversations=self.conversations,
        )

    def handlers(self) -> list[tuple[str, Any]]:
        return [
            (r"/api/v1/chat", ChatCompletionsHandler),
            (r"/api/v1/chat/completions", ChatCompletionsHandler),
            (r"/api/v1/chat/models", ChatModelsHandler),
            (r"/api/v1/chat/conversations", ConversationsHandler),
            (r"/api/v1/chat/conversations/([^/]+)", ConversationHandler),
        ]

    async def stop(self) -> None:
        await self.models.aclose()
        self.conversations.close()
