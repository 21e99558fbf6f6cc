"""The oraculo server extension (chat, memory, execute, voice, agents) and its panels."""

from __future__ import annotations

from typing import Any


def _jupyter_server_extension_points() -> list[dict[str, Any]]:
    from oraculo.extensions.app import OraculoExtension

    return [{"module": "oraculo.extensions", "app": OraculoExtension}]
