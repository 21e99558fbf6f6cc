"""Routes for usage in all three units, and for budgets.

- ``GET v1/usage/summary?period=day|week|month`` (or ``since``/``until``, unix times), with
  ``user=`` or ``group=``: what a user or group used, per unit and per model (and per user for
  operators and a cohort's instructors). A user reads their own and their groups'; an operator
  (usage read-all) anyone's; a cohort's instructors their cohort's, per student.
- ``GET v1/usage/events?since=&until=&limit=``: the caller's own rows (newest first), as
  columns: what the Usage panel charts.
- ``GET v1/usage/export?by=user|group&format=csv|parquet|json`` (and a period): billing
  export for operators (:mod:`.billing`).
- ``GET v1/usage/daily?since=&until=`` (operators): everyone's use per user, groups and model
  with its cost, summed in SQL over the window and this month and today (for budgets), the
  charts' series per day, the requests refused (429) per user and kind, and the kernels that
  reported compute in the last 15 minutes: what the operator's dashboard shows
  (:func:`.usage.dashboard_columns`).
- ``POST v1/usage/kernels`` ``{"samples": [{"kernel_id", "cpu_seconds", "gpu_seconds"}]}``: a
  user's server reports the compute its kernels used since its last report (for the user its
  credential names).
- ``GET v1/budget[?units=cpu_seconds,gpu_seconds]``: the caller's budgets with what is used and
  when each resets; with ``units``, a 429 when one of them (or cost) is spent: the user's server
  asks this before a new execution.
- ``POST v1/stripe/webhook``: Stripe's webhooks, verified by their signature
  (:mod:`.stripe_billing`; 404 unless Stripe is configured).
- ``GET v1/budgets`` (operators), ``PUT v1/budgets`` (a budget as JSON) and
  ``DELETE v1/budgets?scope=&name=&period=&unit=`` (operators who may manage budgets).
"""

from __future__ import annotations

import asyncio
import json
import time
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from .billing import FORMATS, encode, export_frame
from .budgets import Budget
from .errors import Forbidden, InvalidRequest, NotFound
from .handlers import BaseHandler
from .metering import UsageEvent, groups_column
from .usage import (
    UNITS,
    dashboard_columns,
    events_columns,
    iso,
    period_end,
    period_start,
    recent_kernels,
    refusals,
    summary,
)

#: Most compute one report may claim per kernel: a day's worth on 1,024 cores.
MAX_SAMPLE_SECONDS = 86400.0 * 1024
#: Kernels that reported compute this recently are listed as running (``v1/usage/daily``).
RECENT_KERNEL_SECONDS = 900
#: Most usage rows one ``GET v1/usage/events`` returns.
MAX_EVENTS = 100_000


class KernelSample(BaseModel):
    model_config = ConfigDict(extra="forbid")

    kernel_id: str = Field(min_length=1, max_length=255)
    cpu_seconds: float = Field(default=0.0, ge=0, le=MAX_SAMPLE_SECONDS)
    gpu_seconds: float = Field(default=0.0, ge=0, le=MAX_SAMPLE_SECONDS)
    kernel_name: str = Field("kernel", min_length=1, max_length=255)


class RunningKernel(BaseModel):
    model_config = ConfigDict(extra="forbid")

    kernel_id: str = Field(min_length=1, max_length=255)
    kernel_name: str = Field("kernel", min_length=1, max_length=255)


class KernelReport(BaseModel):
    model_config = ConfigDict(extra="forbid")

    samples: list[KernelSample] = Field(max_length=1000)
    #: Every kernel the server runs now (idle ones too), for the operator's dashboard.
    running: list[RunningKernel] | None = Field(default=None, max_length=1000)
    #: The reporting server's name (JupyterHub's named servers; "" for the default one).
    server: str = Field("", max_length=255)


def _json_body(handler: BaseHandler, model: type[BaseModel]) -> Any:
    try:
        data = json.loads(handler.request.body or b"null")
    except ValueError:
        raise InvalidRequest("The body must be JSON.") from None
    if not isinstance(data, dict):
        raise InvalidRequest("The body must be a JSON object.")
    try:
        return model.model_validate(data)
    except ValidationError as e:
        err = e.errors()[0]
        where = ".".join(str(p) for p in err["loc"]) or None
        raise InvalidRequest(f"{where or 'body'}: {err['msg']}", param=where) from None


def _float_arg(handler: BaseHandler, name: str) -> float | None:
    value = handler.get_argument(name, None)
    if value in (None, ""):
        return None
    try:
        return float(value)
    except ValueError:
        raise InvalidRequest(f"'{name}' must be a unix time.", param=name) from None


class UsageSummaryHandler(BaseHandler):
    endpoint = "usage.summary"

    async def get(self) -> None:
        who = self.identity
        assert who is not None
        user = self.get_argument("user", None) or None
        group = self.get_argument("group", None) or None
        if user and group:
            raise InvalidRequest("Give 'user' or 'group', not both.", param="group")
        # a cohort's instructors read its usage per student (oraculo.models.cohorts)
        teaches = group is not None and await self.service.cohorts.teaches(who, group)
        if not who.can_read_all_usage:
            if user not in (None, who.name):
                raise Forbidden("You may only read your own usage.", param="user")
            if group is not None and group not in who.groups and not teaches:
                raise Forbidden("You may only read the usage of your own groups.", param="group")
            if group is None:
                user = who.name
        now = time.time()
        period = self.get_argument("period", "week")
        if period not in ("day", "week", "month"):
            raise InvalidRequest("'period' must be day, week or month.", param="period")
        since = _float_arg(self, "since")
        until = _float_arg(self, "until")
        since = period_start(period, now) if since is None else since
        until = period_end(period, now) if until is None else until
        if until <= since:
            raise InvalidRequest("'until' must be after 'since'.", param="until")
        result = await self._summary(user, group, since, until, who.can_read_all_usage or teaches)
        self.write_json({"object": "usage.summary", **result})

    async def _summary(
        self, user: str | None, group: str | None, since: float, until: float, by_user: bool
    ) -> dict[str, Any]:
        budgets = self.service.budgets
        return await asyncio.to_thread(
            summary,
            self.service.store,
            budgets.prices,
            user=user,
            group=group,
            since=since,
            until=until,
            by_user=by_user and user is None,
        )


class UsageEventsHandler(BaseHandler):
    """The caller's own usage rows in a period, as columns (for the Usage panel's charts)."""

    endpoint = "usage.events"

    async def get(self) -> None:
        who = self.identity
        assert who is not None
        now = time.time()
        since = _float_arg(self, "since")
        until = _float_arg(self, "until")
        since = period_start("month", now) if since is None else since
        until = now + 1 if until is None else until
        try:
            limit = min(max(int(self.get_argument("limit", "20000")), 1), MAX_EVENTS)
        except ValueError:
            raise InvalidRequest("'limit' must be an integer.", param="limit") from None
        columns = await asyncio.to_thread(
            events_columns, self.service.store, who.name, since, until, limit
        )
        self.write_json({"object": "usage.events", "user": who.name, **columns})


class UsageExportHandler(BaseHandler):
    """Billing export for operators: per user or group, CSV, Parquet or JSON."""

    endpoint = "usage.export"

    async def get(self) -> None:
        who = self.identity
        assert who is not None
        if not who.can_read_all_usage:
            raise Forbidden("Billing export is for operators (usage read-all scope).")
        by = self.get_argument("by", "user")
        if by not in ("user", "group"):
            raise InvalidRequest("'by' must be user or group.", param="by")
        fmt = self.get_argument("format", "csv")
        if fmt not in FORMATS:
            raise InvalidRequest(f"'format' must be one of {', '.join(FORMATS)}.", param="format")
        now = time.time()
        period = self.get_argument("period", "month")
        if period not in ("day", "week", "month"):
            raise InvalidRequest("'period' must be day, week or month.", param="period")
        since = _float_arg(self, "since")
        until = _float_arg(self, "until")
        since = period_start(period, now) if since is None else since
        until = period_end(period, now) if until is None else until
        if until <= since:
            raise InvalidRequest("'until' must be after 'since'.", param="until")
        prices = self.service.budgets.prices
        frame = await asyncio.to_thread(export_frame, self.service.store, prices, since, until, by)
        body = await asyncio.to_thread(encode, frame, fmt)
        if isinstance(body, dict):
            self.write_json(body)
            return
        name = f"usage-by-{by}-{iso(since)[:10]}.{fmt}"
        self.set_header("Content-Type", FORMATS[fmt])
        self.set_header("Content-Disposition", f'attachment; filename="{name}"')
        self.finish(body)


class UsageDailyHandler(BaseHandler):
    """Everyone's use per day (operators): the operator's dashboard's data."""

    endpoint = "usage.daily"

    async def get(self) -> None:
        who = self.identity
        assert who is not None
        if not who.can_read_all_usage:
            raise Forbidden("Everyone's usage is for operators (usage read-all scope).")
        now = time.time()
        since = _float_arg(self, "since")
        until = _float_arg(self, "until")
        since = period_start("month", now) if since is None else since
        until = period_end("day", now) if until is None else until
        if until <= since:
            raise InvalidRequest("'until' must be after 'since'.", param="until")
        if until - since > 400 * 86400:
            raise InvalidRequest("Ask for at most 400 days at a time.", param="since")
        store, prices = self.service.store, self.service.budgets.prices
        days = await asyncio.to_thread(dashboard_columns, store, prices, since, until, now)
        refused = await asyncio.to_thread(refusals, store, since, until)
        kernels = await asyncio.to_thread(recent_kernels, store, now - RECENT_KERNEL_SECONDS)
        running = self.service.running_kernels
        self.write_json(
            {
                "object": "usage.daily",
                **days,
                "refusals": refused,
                "kernels": kernels,
                "running": running,
            }
        )


class KernelUsageHandler(BaseHandler):
    endpoint = "usage.kernels"

    async def post(self) -> None:
        who = self.identity
        assert who is not None
        report: KernelReport = _json_body(self, KernelReport)
        now = time.time()
        events = [
            UsageEvent(
                user=who.name,
                model=s.kernel_name,
                endpoint="kernel",
                status=200,
                cpu_seconds=round(s.cpu_seconds, 3),
                gpu_seconds=round(s.gpu_seconds, 3) if s.gpu_seconds else None,
                groups=groups_column(who.groups),
                ref=s.kernel_id,
                ts=now,
            )
            for s in report.samples
            if s.cpu_seconds > 0 or s.gpu_seconds > 0
        ]
        if events:
            await self.service.record_events(events)
        if report.running is not None:
            self.service.running_kernels.setdefault(who.name, {})[report.server] = {
                "at": iso(now),
                "kernels": [k.model_dump() for k in report.running],
            }
        self.set_status(204)
        self.finish()


class BudgetHandler(BaseHandler):
    """The caller's own budgets; ``?units=`` turns it into an admission check."""

    endpoint = "budget"

    async def get(self) -> None:
        who = self.identity
        assert who is not None
        units = [u for u in self.get_argument("units", "").split(",") if u]
        unknown = sorted(set(units) - set(UNITS))
        if unknown:
            raise InvalidRequest(
                f"Unknown unit {unknown[0]!r}; units are {', '.join(UNITS)}.", param="units"
            )
        budgets = self.service.budgets
        if units:
            await budgets.check(who, units)
        self.write_json({"object": "budget", "user": who.name, "data": await budgets.status(who)})


class BudgetsHandler(BaseHandler):
    """Every budget (operators); set and remove them (operators who may manage budgets)."""

    endpoint = "budgets"

    async def get(self) -> None:
        who = self.identity
        assert who is not None
        if not who.can_read_all_usage:
            raise Forbidden("Listing every budget is for operators (usage read-all scope).")
        data = [b.model_dump() for b in await self.service.budgets.all(fresh=True)]
        self.write_json({"object": "list", "data": data})

    def _manager(self) -> str:
        who = self.identity
        assert who is not None
        if not who.can_manage_budgets:
            raise Forbidden("Changing budgets needs the budgets write scope (operators).")
        return who.name

    async def put(self) -> None:
        by = self._manager()
        budget: Budget = _json_body(self, Budget)
        await self.service.budgets.put(budget, by)
        self.write_json(budget.model_dump())

    async def delete(self) -> None:
        self._manager()
        key = {}
        for name in ("scope", "name", "period", "unit"):
            value = self.get_argument(name, "")
            if not value:
                raise InvalidRequest(f"'{name}' is required.", param=name)
            key[name] = value
        if not await self.service.budgets.delete(**key):
            raise NotFound("No such budget.")
        self.set_status(204)
        self.finish()


class StripeWebhookHandler(BaseHandler):
    """Stripe's webhooks: verified by signature (Stripe calls without a hub token)."""

    auth_required = False
    endpoint = "stripe.webhook"

    async def post(self) -> None:
        billing = self.service.stripe
        if billing is None:
            raise NotFound("Stripe is not configured here.")
        event = billing.verify(self.request.body, self.request.headers.get("Stripe-Signature"))
        self.write_json(await billing.handle(event, self.service.budgets))


def usage_routes(prefix: str, kw: dict[str, Any]) -> list[tuple[str, type, dict[str, Any]]]:
    return [
        (rf"{prefix}v1/usage/summary", UsageSummaryHandler, kw),
        (rf"{prefix}v1/usage/kernels", KernelUsageHandler, kw),
        (rf"{prefix}v1/usage/events", UsageEventsHandler, kw),
        (rf"{prefix}v1/usage/daily", UsageDailyHandler, kw),
        (rf"{prefix}v1/usage/export", UsageExportHandler, kw),
        (rf"{prefix}v1/budget", BudgetHandler, kw),
        (rf"{prefix}v1/budgets", BudgetsHandler, kw),
        (rf"{prefix}v1/stripe/webhook", StripeWebhookHandler, kw),
    ]
