"""The base of every feature of the extension (status, chat, memory, execute, voice, agents).

A feature builds its services (``parent=self``, so they read their traitlets config) and lists its
handlers. The extension loads the features named in ``OraculoExtension.features``; one that fails
to load is reported once in the log and the server goes on without it. Once every feature has
loaded, each is :meth:`~Feature.connect`-ed to the others, so a feature that uses another (chat
uses memory's search, agents run tools through execute and answer chat's ``agent:`` models, voice
speaks chat's replies) is handed what it needs instead of its services walking the extension.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from traitlets import Instance
from traitlets.config import LoggingConfigurable

from oraculo.extensions.base.modelclient import ModelClient


class Feature(LoggingConfigurable):
    """One feature: its services, and its ``(pattern, handler)`` pairs."""

    #: The name handlers look the feature up by (``self.feature("chat")``).
    name = ""

    models = Instance(
        ModelClient,
        allow_none=True,
        help="The extension's one client of the model service (shared pool and credential).",
    )

    @property
    def extension(self) -> Any:
        """The :class:`~oraculo.extensions.app.OraculoExtension` this feature belongs to."""
        return self.parent

    def connect(self, features: Mapping[str, Feature]) -> None:
        """Take what this feature uses from the other loaded features (called once, after all
        have loaded; a feature that is missing is absent from ``features``)."""

    def handlers(self) -> list[tuple[str, Any]]:
        return []

    async def stop(self) -> None:
        """Release what the feature holds (kernels, files, connections) at server shutdown."""
