"""Budgets per user and per group, per day or per month, in any unit of :mod:`.usage`.

A budget is ``{scope: user|group, name, period: day|month, unit, limit}``; ``name = "*"`` with
scope ``user`` is every user's budget unless they have their own (same unit and period). Budgets
live in the usage store's ``budgets`` table, so an operator changes them through the API (or the
dashboard) and every model service reading that store applies them within ``refresh_seconds``
(the one that took the change, at once): no restart.

Work is checked before it starts: a chat completion needs its **tokens** budgets unspent, the
audio endpoints their **voice_seconds**, a new execution (asked by the user's server through
``GET /v1/budget?units=cpu_seconds,gpu_seconds``) its compute; a **cost** budget bounds all of
them. Embeddings are metered but never refused, so memory search keeps working. A refusal is a
429 ``insufficient_quota`` / ``budget_exceeded`` whose message names the budget and when it
resets (also in ``Retry-After``).

What each user and group used in the current period is kept in memory, seeded from the store on
first use and re-read every ``reseed_seconds`` (other model services may have added to it), and
charged as work finishes.
"""

from __future__ import annotations

import asyncio
import dataclasses
import time
from typing import Any, Literal

import sqlalchemy as sa
from pydantic import BaseModel, ConfigDict, Field

from .auth import Identity
from .errors import QuotaExceeded
from .metering import UsageEvent, UsageStore, metadata
from .usage import (
    Prices,
    Unit,
    add_totals,
    event_totals,
    iso,
    period_end,
    period_start,
    totals,
)

budgets_table = sa.Table(
    "budgets",
    metadata,
    sa.Column("scope", sa.String(16), primary_key=True),
    sa.Column("name", sa.String(255), primary_key=True),
    sa.Column("period", sa.String(16), primary_key=True),
    sa.Column("unit", sa.String(32), primary_key=True),
    sa.Column("limit_value", sa.Float, nullable=False),
    sa.Column("updated_at", sa.Float, nullable=False),
    sa.Column("updated_by", sa.String(255), nullable=True),
)

#: The units each metered endpoint spends (``cost`` bounds them all).
ENDPOINT_UNITS: dict[str, tuple[str, ...]] = {
    "chat.completions": ("tokens",),
    "audio.transcriptions": ("voice_seconds",),
    "audio.speech": ("voice_seconds",),
    "execute": ("cpu_seconds", "gpu_seconds"),
}

_UNIT_WORDS = {
    "tokens": "token",
    "cpu_seconds": "CPU-seconds",
    "gpu_seconds": "GPU-seconds",
    "voice_seconds": "voice-seconds",
    "cost": "cost",
}
_PERIOD_WORDS = {"day": "daily", "month": "monthly"}


class Budget(BaseModel):
    """One budget, as the API and the config take it."""

    model_config = ConfigDict(extra="forbid")

    scope: Literal["user", "group"]
    name: str = Field(min_length=1, max_length=255, pattern=r"^[^\s,]+$")
    period: Literal["day", "month"]
    unit: Unit
    limit: float = Field(ge=0, description="Most of ``unit`` that may be used in one period.")

    @property
    def key(self) -> tuple[str, str, str, str]:
        return (self.scope, self.name, self.period, self.unit)

    def describe(self, who: str) -> str:
        amount = f"{self.limit:g}" if self.unit == "cost" else f"{self.limit:g} {self.unit}"
        return (
            f"the {_PERIOD_WORDS[self.period]} {_UNIT_WORDS[self.unit]} budget of {who} ({amount})"
        )


class BudgetExceeded(QuotaExceeded):
    """A budget is spent: 429 with the budget and its reset in the message."""

    code = "budget_exceeded"


@dataclasses.dataclass
class _Used:
    totals: dict[str, float]
    period_start: float
    read_at: float


class Budgets:
    """The budgets in the store, and what each user and group used against them."""

    def __init__(
        self,
        store: UsageStore,
        prices: Prices | None = None,
        refresh_seconds: float = 2.0,
        reseed_seconds: float = 30.0,
    ) -> None:
        self.store = store
        self.prices = prices or Prices()
        self.refresh_seconds = refresh_seconds
        self.reseed_seconds = reseed_seconds
        budgets_table.create(store.engine, checkfirst=True)
        self._budgets: list[Budget] = []
        self._loaded_at = -1e18
        self._used: dict[tuple[str, str], _Used] = {}

    # --- the budgets themselves -------------------------------------------------------------

    def _read(self) -> list[Budget]:
        with self.store.engine.connect() as conn:
            rows = conn.execute(sa.select(budgets_table)).all()
        return [
            Budget(scope=r.scope, name=r.name, period=r.period, unit=r.unit, limit=r.limit_value)
            for r in rows
        ]

    async def all(self, fresh: bool = False) -> list[Budget]:
        if fresh or time.monotonic() - self._loaded_at > self.refresh_seconds:
            self._budgets = await asyncio.to_thread(self._read)
            self._loaded_at = time.monotonic()
        return self._budgets

    def _put(self, b: Budget, by: str, only_new: bool) -> None:
        t = budgets_table
        key = (
            (t.c.scope == b.scope)
            & (t.c.name == b.name)
            & (t.c.period == b.period)
            & (t.c.unit == b.unit)
        )
        values = {"limit_value": b.limit, "updated_at": time.time(), "updated_by": by}
        with self.store.engine.begin() as conn:
            if conn.execute(sa.select(t.c.scope).where(key)).first() is not None:
                if not only_new:
                    conn.execute(t.update().where(key).values(**values))
            else:
                conn.execute(
                    t.insert().values(
                        scope=b.scope, name=b.name, period=b.period, unit=b.unit, **values
                    )
                )

    async def put(self, budget: Budget, by: str) -> Budget:
        """Set (add or change) a budget; in force at once here, within seconds elsewhere."""
        await asyncio.to_thread(self._put, budget, by, False)
        await self.all(fresh=True)
        return budget

    def seed(self, budgets: list[dict[str, Any]]) -> None:
        """Budgets from the config, added where the store has none with the same key (the
        store, changed through the API, wins over the config file)."""
        for b in budgets:
            self._put(Budget.model_validate(b), "config", True)

    def _delete(self, scope: str, name: str, period: str, unit: str) -> int:
        t = budgets_table
        with self.store.engine.begin() as conn:
            r = conn.execute(
                t.delete().where(
                    (t.c.scope == scope)
                    & (t.c.name == name)
                    & (t.c.period == period)
                    & (t.c.unit == unit)
                )
            )
            return int(r.rowcount or 0)

    def _set_by(self, b: Budget) -> str | None:
        t = budgets_table
        key = (
            (t.c.scope == b.scope)
            & (t.c.name == b.name)
            & (t.c.period == b.period)
            & (t.c.unit == b.unit)
        )
        with self.store.engine.connect() as conn:
            row = conn.execute(sa.select(t.c.updated_by).where(key)).first()
        return None if row is None else row[0]

    async def set_by(self, budget: Budget) -> str | None:
        """Who last set the budget with ``budget``'s key (None: there is none)."""
        return await asyncio.to_thread(self._set_by, budget)

    async def delete(self, scope: str, name: str, period: str, unit: str) -> bool:
        n = await asyncio.to_thread(self._delete, scope, name, period, unit)
        await self.all(fresh=True)
        return n > 0

    async def applicable(self, who: Identity) -> list[tuple[Budget, str]]:
        """The budgets that bound ``who``, each with the key its use is counted under."""
        budgets = await self.all()
        own = {(b.period, b.unit) for b in budgets if b.scope == "user" and b.name == who.name}
        out = []
        for b in budgets:
            if b.scope == "user":
                if b.name == who.name or (b.name == "*" and (b.period, b.unit) not in own):
                    out.append((b, f"user:{who.name}"))
            elif b.name in who.groups:
                out.append((b, f"group:{b.name}"))
        return out

    # --- use against them -------------------------------------------------------------------

    async def used(self, key: str, period: str, now: float) -> dict[str, float]:
        """What the user or group ``key`` (``user:NAME`` / ``group:NAME``) used this period."""
        start = period_start(period, now)
        slot = (key, period)
        u = self._used.get(slot)
        stale = u is None or time.monotonic() - u.read_at > self.reseed_seconds
        if u is None or stale or u.period_start != start:
            kind, _, name = key.partition(":")
            read_at = time.monotonic()
            found = await asyncio.to_thread(
                totals,
                self.store,
                self.prices,
                user=name if kind == "user" else None,
                group=name if kind == "group" else None,
                since=start,
            )
            u = _Used(found, start, read_at)
            self._used[slot] = u
        return u.totals

    def charge(self, event: UsageEvent) -> None:
        """Add a finished piece of work to its user's and groups' use (where already read)."""
        add = None
        keys = [f"user:{event.user}"]
        keys += [f"group:{g}" for g in (event.groups or "").split(",") if g]
        for key in keys:
            for period in ("day", "month"):
                u = self._used.get((key, period))
                if u is None or u.period_start > event.ts:
                    continue
                if add is None:
                    add = event_totals(event, self.prices)
                add_totals(u.totals, add)

    async def status(self, who: Identity, now: float | None = None) -> list[dict[str, Any]]:
        """Every budget that bounds ``who``, with what was used and when it resets."""
        now = now or time.time()
        out = []
        for b, key in await self.applicable(who):
            used = (await self.used(key, b.period, now)).get(b.unit, 0.0)
            out.append(
                {
                    **b.model_dump(),
                    "counted_for": key,
                    "used": round(used, 6),
                    "remaining": round(max(0.0, b.limit - used), 6),
                    "exceeded": used >= b.limit,
                    "resets_at": iso(period_end(b.period, now)),
                }
            )
        return out

    async def check(
        self, who: Identity, units: tuple[str, ...] | list[str], now: float | None = None
    ) -> None:
        """Raise :class:`BudgetExceeded` when a budget of one of ``units`` (or of cost) is
        spent for ``who``, naming the budget and when it resets."""
        if not units:
            return
        now = now or time.time()
        wanted = {*units, "cost"}
        for b, key in await self.applicable(who):
            if b.unit not in wanted:
                continue
            used = (await self.used(key, b.period, now)).get(b.unit, 0.0)
            if used >= b.limit:
                reset = period_end(b.period, now)
                whose = f"user {who.name}" if b.scope == "user" else f"group {b.name}"
                raise BudgetExceeded(
                    f"Over budget: {b.describe(whose)} is spent ({used:.6g} used). "
                    f"It resets at {iso(reset)}.",
                    retry_after=max(1.0, reset - now),
                )

    async def check_endpoint(self, who: Identity, endpoint: str) -> None:
        await self.check(who, ENDPOINT_UNITS.get(endpoint, ()))
