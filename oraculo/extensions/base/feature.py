"""Features of the oraculo extension (status, chat, memory, execute, voice, agents).

A feature is a :class:`Feature`: it builds its services (``parent=self``, so they read their
traitlets config) and lists its handlers. The extension loads the features named in
``OraculoExtension.features``; one that fails to load is reported once in the log and the
server goes on without it.
"""

from __future__ import annotations

from typing import Any

from traitlets.config import LoggingConfigurable


class Feature(LoggingConfigurable):
    """One feature: its services, and its ``(pattern, handler)`` pairs."""

    #: The name handlers look the feature up by (``self.feature("chat")``).
    name = ""

    @property
    def extension(self) -> Any:
        """The :class:`~oraculo.extensions.app.OraculoExtension` this feature belongs to."""
        return self.parent

    def handlers(self) -> list[tuple[str, Any]]:
        return []

    async def stop(self) -> None:
        """Release what the feature holds (kernels, files, connections) at server shutdown."""
