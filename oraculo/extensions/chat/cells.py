"""Code from the chat into the user's notebook, through JupyterLab itself.

The server never rewrites a ``.ipynb`` that an editor has open (the editor would overwrite it,
or warn of a conflict). Instead it emits a Jupyter Server event (:data:`SCHEMA_ID`) on the
server's event bus; JupyterLab pages subscribe to it (``/api/events/subscribe``, the user's own
server, the user's own credential), and Oráculo's small JupyterLab extension
(``oraculo/labextension``) inserts the code as a new cell below the notebook's active cell, or
replaces the active cell, in the open editor, where the user reviews and runs it.
"""

from __future__ import annotations

import uuid
from typing import Any

from traitlets.config import LoggingConfigurable

from oraculo.extensions.base.errors import Conflict

SCHEMA_ID = "https://oraculo.dev/events/chat/insert-cell"
SCHEMA: dict[str, Any] = {
    "$id": SCHEMA_ID,
    "version": "1",
    "title": "Insert a cell",
    "personal-data": True,
    "description": "Code from Oráculo's chat for the notebook open at `path` in JupyterLab.",
    "type": "object",
    "required": ["id", "path", "code", "mode"],
    "properties": {
        "id": {"type": "string", "title": "Event id (a browser inserts each id once)"},
        "path": {"type": "string", "title": "The notebook's path"},
        "code": {"type": "string", "title": "The cell's source"},
        "mode": {"enum": ["below", "replace"], "title": "Below the active cell, or instead"},
        "origin": {"type": "string", "title": "Where the code came from (chat, magic...)"},
    },
}


class CellInserter(LoggingConfigurable):
    """Emits insert-cell events for the open notebooks' JupyterLab pages."""

    def __init__(self, event_logger: Any, notebooks: Any, **kw: Any) -> None:
        super().__init__(**kw)
        self.event_logger = event_logger
        self.notebooks = notebooks
        if event_logger is not None:
            event_logger.register_event_schema(SCHEMA)

    async def insert(
        self, path: str, code: str, mode: str = "below", origin: str = "chat"
    ) -> dict[str, Any]:
        """Ask the JupyterLab pages that have ``path`` open to insert ``code``; the notebook
        must be open (have a session), else 409."""
        if await self.notebooks.kernel_for(path) is None:
            raise Conflict(
                f"The notebook {path!r} is not open: open it in JupyterLab, then insert.",
                reason="Notebook not open",
            )
        event = {"id": uuid.uuid4().hex, "path": path, "code": code, "mode": mode}
        event["origin"] = origin
        self.event_logger.emit(schema_id=SCHEMA_ID, data=event)
        return {"id": event["id"], "notebook": path, "mode": mode}
