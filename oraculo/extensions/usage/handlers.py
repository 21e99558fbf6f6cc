"""``GET /api/v1/usage?period=day|week|month``: this user's usage, budgets and usage rows."""

from __future__ import annotations

from jupyter_server.auth.decorator import authorized
from tornado import web

from oraculo.extensions.base.handlers import OraculoAPIHandler


class UsageHandler(OraculoAPIHandler):
    @web.authenticated
    @authorized
    async def get(self) -> None:
        period = self.get_query_argument("period", "week")
        self.finish(await self.feature("usage").sampler.overview(period))
