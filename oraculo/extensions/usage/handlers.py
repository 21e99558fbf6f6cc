"""``GET /api/v1/usage?period=day|week|month``: this user's usage, budgets and usage rows.
``GET /api/v1/usage/executions?period=...&limit=N``: their most expensive executions."""

from __future__ import annotations

import datetime as dt

from jupyter_server.auth.decorator import authorized
from tornado import web

from oraculo.extensions.base.errors import BadRequest, Unavailable
from oraculo.extensions.base.handlers import OraculoAPIHandler
from oraculo.extensions.usage.executions import MAX_RECORDS, period_start, top_executions


class UsageHandler(OraculoAPIHandler):
    @web.authenticated
    @authorized
    async def get(self) -> None:
        period = self.get_query_argument("period", "week")
        self.finish(await self.feature("usage").sampler.overview(period))


class ExecutionsHandler(OraculoAPIHandler):
    """The period's executions on this user's behalf (API, chat, agents, MCP), most CPU seconds
    first, read from their audit records."""

    @web.authenticated
    @authorized
    async def get(self) -> None:
        period = self.get_query_argument("period", "week")
        if period not in ("day", "week", "month"):
            raise BadRequest("period must be day, week or month")
        try:
            limit = int(self.get_query_argument("limit", "10"))
        except ValueError:
            raise BadRequest("limit must be an integer") from None
        if not 1 <= limit <= 100:
            raise BadRequest("limit must be between 1 and 100")
        try:
            audit = self.feature("execute").service.audit
        except KeyError:
            raise Unavailable("Executions are not enabled on this server.") from None
        since = period_start(period, dt.datetime.now(dt.UTC))
        records = await audit.read(limit=MAX_RECORDS)
        self.finish(
            {
                "object": "list",
                "period": period,
                "since": since.strftime("%Y-%m-%dT%H:%M:%SZ"),
                "data": top_executions(records, since, limit),
            }
        )
