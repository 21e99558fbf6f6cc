"""The user's open notebooks, for binding a conversation to one.

A notebook is *open* when it has a Jupyter session (JupyterLab makes one when it opens a notebook
with a kernel): its path, its kernel and whether that kernel is busy. A conversation bound to a
notebook takes its context from that notebook's cells and its live kernel (variables, and what was
run there but not saved: the kernel's input history), and "Run" in the chat executes in that
kernel (the execute service's ``session``).
"""

from __future__ import annotations

import inspect
from typing import Any

from traitlets.config import LoggingConfigurable


class NotebookSessions(LoggingConfigurable):
    """Reads the server's sessions; holds nothing of its own."""

    def __init__(self, session_manager: Any = None, kernel_manager: Any = None, **kw: Any):
        super().__init__(**kw)
        self.session_manager = session_manager
        self.kernel_manager = kernel_manager

    async def list_open(self) -> list[dict[str, Any]]:
        """Every notebook session, newest activity first: path, kernel id and name, state."""
        if self.session_manager is None:
            return []
        found = self.session_manager.list_sessions()
        sessions = await found if inspect.isawaitable(found) else found
        out = []
        for s in sessions:
            kernel = s.get("kernel") or {}
            if s.get("type", "notebook") != "notebook" or not kernel.get("id"):
                continue
            # JupyterLab 4 may give a session a random path and the notebook's file name as
            # its name; the path is the notebook's when it names one.
            path = str(s.get("path") or "")
            if not path.endswith(".ipynb") and str(s.get("name") or "").endswith(".ipynb"):
                path = str(s["name"])
            out.append(
                {
                    "path": path,
                    "name": s.get("name") or "",
                    "session_id": s.get("id"),
                    "kernel_id": kernel["id"],
                    "kernel_name": kernel.get("name") or "",
                    "state": kernel.get("execution_state") or "unknown",
                    "last_activity": _iso(kernel.get("last_activity")),
                }
            )
        out.sort(key=lambda n: n["last_activity"] or "", reverse=True)
        return out

    async def kernel_for(self, path: str) -> str | None:
        """The live kernel of the notebook at ``path``, or None when it is not open."""
        for notebook in await self.list_open():
            if notebook["path"] == path:
                return str(notebook["kernel_id"])
        return None


def _iso(value: Any) -> str | None:
    if value is None:
        return None
    if hasattr(value, "isoformat"):
        return str(value.isoformat())
    return str(value)
