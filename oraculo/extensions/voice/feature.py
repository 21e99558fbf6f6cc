"""The voice feature: ``WS /api/v1/voice``, speech in and speech out around the chat feature."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from traitlets import Instance, Type

from oraculo.extensions.base.feature import Feature
from oraculo.extensions.voice.handlers import VoiceHandler
from oraculo.extensions.voice.service import VoiceService


class VoiceFeature(Feature):
    """Spoken conversations: transcription and speech on the model service, replies from chat."""

    name = "voice"

    service_class = Type(
        VoiceService, klass=VoiceService, config=True, help="The service that runs voice sessions."
    )
    service = Instance(VoiceService)

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        assert self.models is not None
        self._chat: Any = None
        self.service = self.service_class(parent=self, chat=lambda: self._chat, models=self.models)

    def connect(self, features: Mapping[str, Feature]) -> None:
        # a spoken turn is a chat turn: the chat feature's service answers it
        self._chat = getattr(features.get("chat"), "service", None)

    def handlers(self) -> list[tuple[str, Any]]:
        return [(r"/api/v1/voice", VoiceHandler)]

    async def stop(self) -> None:
        await self.service.aclose()
