"""``GET /api/v1/status``: the state of this user's workspace."""

from __future__ import annotations

from jupyter_server.auth.decorator import authorized
from tornado import web

from oraculo.extensions.base.handlers import OraculoAPIHandler


class StatusHandler(OraculoAPIHandler):
    @web.authenticated
    @authorized
    async def get(self) -> None:
        kernels = [
            {
                "id": k["id"],
                "name": k["name"],
                "execution_state": k.get("execution_state"),
                "connections": k.get("connections", 0),
                "last_activity": _iso(k.get("last_activity")),
            }
            for k in self.kernel_manager.list_kernels()
        ]
        status = await self.feature("status").service.status(self.oraculo.owner, kernels)
        status["caller"] = self.current_user.username
        self.finish(status)


def _iso(value: object) -> str | None:
    """Kernel models carry last_activity as a datetime or, already serialised, a string."""
    if value is None:
        return None
    return value.isoformat() if hasattr(value, "isoformat") else str(value)
