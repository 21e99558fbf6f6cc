"""What a user or a group used in a period, in three units and one weighted unit.

The units: model **tokens** (prompt + completion, per model), kernel compute (**cpu_seconds**,
**gpu_seconds**) and **voice_seconds** (heard or spoken). :class:`Prices` turns them into one
weighted unit, **cost**, with the operator's prices: per 1k tokens (per model, or one price for
all), per CPU hour, per GPU hour and per voice minute.

Everything here reads the one ``usage_events`` table of :mod:`oraculo.models.metering`, so it
runs on SQLite or PostgreSQL alike.
"""

from __future__ import annotations

import calendar
import datetime as dt
import threading
from typing import Any, Literal

import sqlalchemy as sa
from pydantic import BaseModel, ConfigDict, Field

from .metering import _SUMMED, UsageEvent, UsageStore, usage_daily, usage_events, utc_day

#: The units a budget may count, ``cost`` being the weighted one.
UNITS = ("tokens", "cpu_seconds", "gpu_seconds", "voice_seconds", "cost")
Unit = Literal["tokens", "cpu_seconds", "gpu_seconds", "voice_seconds", "cost"]
Period = Literal["day", "week", "month"]


class Prices(BaseModel):
    """The operator's prices for the weighted unit (any currency; 0 = free)."""

    model_config = ConfigDict(extra="forbid")

    per_1k_tokens: float = Field(
        default=0.0, ge=0, description="Price of 1,000 tokens of any model."
    )
    models: dict[str, float] = Field(
        default_factory=dict, description="Price of 1,000 tokens per model name (overrides)."
    )
    per_cpu_hour: float = Field(default=0.0, ge=0)
    per_gpu_hour: float = Field(default=0.0, ge=0)
    per_voice_minute: float = Field(default=0.0, ge=0)

    def token_price(self, model: str) -> float:
        return self.models.get(model, self.per_1k_tokens)

    def cost(
        self,
        model: str,
        tokens: float = 0.0,
        cpu_seconds: float = 0.0,
        gpu_seconds: float = 0.0,
        voice_seconds: float = 0.0,
    ) -> float:
        return (
            tokens / 1000 * self.token_price(model)
            + cpu_seconds / 3600 * self.per_cpu_hour
            + gpu_seconds / 3600 * self.per_gpu_hour
            + voice_seconds / 60 * self.per_voice_minute
        )

    def event_cost(self, e: UsageEvent) -> float:
        return self.cost(
            e.model,
            e.prompt_tokens + e.completion_tokens,
            e.cpu_seconds or 0.0,
            e.gpu_seconds or 0.0,
            e.audio_seconds or 0.0,
        )


def empty_totals() -> dict[str, float]:
    return {
        "tokens": 0,
        "prompt_tokens": 0,
        "completion_tokens": 0,
        "cpu_seconds": 0.0,
        "gpu_seconds": 0.0,
        "voice_seconds": 0.0,
        "cost": 0.0,
        "requests": 0,
    }


def event_totals(e: UsageEvent, prices: Prices) -> dict[str, float]:
    """One event's contribution to each unit."""
    return {
        "tokens": e.prompt_tokens + e.completion_tokens,
        "prompt_tokens": e.prompt_tokens,
        "completion_tokens": e.completion_tokens,
        "cpu_seconds": e.cpu_seconds or 0.0,
        "gpu_seconds": e.gpu_seconds or 0.0,
        "voice_seconds": e.audio_seconds or 0.0,
        "cost": prices.event_cost(e),
        "requests": 0 if e.endpoint == "kernel" else 1,
    }


def add_totals(into: dict[str, float], more: dict[str, float]) -> None:
    for k, v in more.items():
        into[k] = into.get(k, 0) + v


# --- periods (UTC) ------------------------------------------------------------------------------


def period_start(period: str, now: float) -> float:
    """When the day, ISO week (Monday) or month containing ``now`` began, in UTC."""
    d = dt.datetime.fromtimestamp(now, dt.UTC).replace(hour=0, minute=0, second=0, microsecond=0)
    if period == "week":
        d -= dt.timedelta(days=d.weekday())
    elif period == "month":
        d = d.replace(day=1)
    elif period != "day":
        raise ValueError(f"unknown period {period!r}")
    return d.timestamp()


def period_end(period: str, now: float) -> float:
    """When that period ends: when a budget over it resets."""
    start = dt.datetime.fromtimestamp(period_start(period, now), dt.UTC)
    if period == "day":
        return (start + dt.timedelta(days=1)).timestamp()
    if period == "week":
        return (start + dt.timedelta(days=7)).timestamp()
    days = calendar.monthrange(start.year, start.month)[1]
    return (start + dt.timedelta(days=days)).timestamp()


def iso(ts: float) -> str:
    return dt.datetime.fromtimestamp(ts, dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


# --- queries ------------------------------------------------------------------------------------


def _like_group(t: sa.Table, group: str) -> sa.ColumnElement[bool]:
    escaped = group.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")
    return t.c.groups.like(f"%,{escaped},%", escape="\\")


def _table(since: float | None, until: float | None) -> sa.Table:
    """``usage_daily`` when the window is whole UTC days (every period is), else the rows."""
    if (since is None or since % 86400 == 0) and (until is None or until % 86400 == 0):
        return usage_daily
    return usage_events


def _filters(
    t: sa.Table, user: str | None, group: str | None, since: float | None, until: float | None
) -> list[sa.ColumnElement[bool]]:
    c = t.c
    ts = c.day if t is usage_daily else c.ts
    where: list[sa.ColumnElement[bool]] = []
    if user is not None:
        where.append(c.user == user)
    if group is not None:
        where.append(_like_group(t, group))
    if since is not None:
        where.append(ts >= since)
    if until is not None:
        where.append(ts < until)
    return where


def _cost(t: sa.FromClause, prices: Prices) -> sa.ColumnElement[Any]:
    """The weighted unit of each row, in SQL (the token price by model)."""
    c = t.c
    price: sa.ColumnElement[Any] = sa.literal(prices.per_1k_tokens)
    if prices.models:
        price = sa.case(
            *((c.model == m, sa.literal(p)) for m, p in prices.models.items()),
            else_=sa.literal(prices.per_1k_tokens),
        )
    zero = sa.literal(0.0)
    return (
        (sa.func.coalesce(c.prompt_tokens, 0) + sa.func.coalesce(c.completion_tokens, 0))
        * price
        / 1000.0
        + sa.func.coalesce(c.cpu_seconds, zero) * (prices.per_cpu_hour / 3600)
        + sa.func.coalesce(c.gpu_seconds, zero) * (prices.per_gpu_hour / 3600)
        + sa.func.coalesce(c.audio_seconds, zero) * (prices.per_voice_minute / 60)
    )


def _sums(t: sa.FromClause, prices: Prices, *group_by: sa.ColumnElement[Any]) -> list[Any]:
    """Every unit summed, and the cost; ``t``: ``usage_events``, or ``usage_daily`` or a
    subquery of its columns (with ``requests``)."""
    c = t.c
    if "requests" in c:
        requests = sa.func.sum(c.requests)
    else:
        requests = sa.func.sum(sa.case((c.endpoint == "kernel", 0), else_=1))
    return [
        *group_by,
        requests.label("requests"),
        sa.func.coalesce(sa.func.sum(c.prompt_tokens), 0).label("prompt_tokens"),
        sa.func.coalesce(sa.func.sum(c.completion_tokens), 0).label("completion_tokens"),
        sa.func.coalesce(sa.func.sum(c.cpu_seconds), 0.0).label("cpu_seconds"),
        sa.func.coalesce(sa.func.sum(c.gpu_seconds), 0.0).label("gpu_seconds"),
        sa.func.coalesce(sa.func.sum(c.audio_seconds), 0.0).label("voice_seconds"),
        sa.func.coalesce(sa.func.sum(_cost(t, prices)), 0.0).label("cost"),
    ]


def _row_totals(row: Any) -> dict[str, float]:
    m = row._mapping
    return {
        "tokens": int(m["prompt_tokens"]) + int(m["completion_tokens"]),
        "prompt_tokens": int(m["prompt_tokens"]),
        "completion_tokens": int(m["completion_tokens"]),
        "cpu_seconds": float(m["cpu_seconds"]),
        "gpu_seconds": float(m["gpu_seconds"]),
        "voice_seconds": float(m["voice_seconds"]),
        "cost": float(m["cost"]),
        "requests": int(m["requests"] or 0),
    }


def totals(
    store: UsageStore,
    prices: Prices,
    *,
    user: str | None = None,
    group: str | None = None,
    since: float | None = None,
    until: float | None = None,
) -> dict[str, float]:
    """Every unit summed over one user's (or group's, or everyone's) rows in ``[since, until)``."""
    t = _table(since, until)
    q = sa.select(*_sums(t, prices)).where(*_filters(t, user, group, since, until))
    out = empty_totals()
    with store.engine.connect() as conn:
        for row in conn.execute(q):
            add_totals(out, _row_totals(row))
    return out


def summary(
    store: UsageStore,
    prices: Prices,
    *,
    user: str | None = None,
    group: str | None = None,
    since: float,
    until: float,
    by_user: bool = False,
) -> dict[str, Any]:
    """What ``user`` or ``group`` (or everyone) used in ``[since, until)``: totals in every unit,
    per model and (``by_user``) per user."""
    table = _table(since, until)
    where = _filters(table, user, group, since, until)
    overall = empty_totals()
    models: dict[str, dict[str, float]] = {}
    users: dict[str, dict[str, float]] = {}
    keys = [table.c.model, table.c.user] if by_user else [table.c.model]
    q = sa.select(*_sums(table, prices, *keys)).where(*where).group_by(*keys)
    with store.engine.connect() as conn:
        rows = conn.execute(q).all()  # one pass over the window, however it is split
    for row in rows:
        t = _row_totals(row)
        add_totals(overall, t)
        add_totals(models.setdefault(row.model, empty_totals()), t)
        if by_user:
            add_totals(users.setdefault(row.user, empty_totals()), t)
    out: dict[str, Any] = {
        "user": user,
        "group": group,
        "since": iso(since),
        "until": iso(until),
        "totals": _rounded(overall),
        "models": [{"model": m, **_rounded(t)} for m, t in sorted(models.items())],
    }
    if by_user:
        ranked = sorted(users.items(), key=lambda kv: (-kv[1]["cost"], -kv[1]["tokens"], kv[0]))
        out["users"] = [{"user": u, **_rounded(t)} for u, t in ranked]
    return out


def _rounded(t: dict[str, float]) -> dict[str, float]:
    return {
        k: (round(v, 3) if k.endswith("seconds") else round(v, 6) if k == "cost" else int(v))
        for k, v in t.items()
    }


#: The columns of :func:`events_columns`, in order.
EVENT_COLUMNS = (
    "ts",
    "model",
    "endpoint",
    "status",
    "prompt_tokens",
    "completion_tokens",
    "cpu_seconds",
    "gpu_seconds",
    "voice_seconds",
    "ref",
    "error_type",
)


def events_columns(
    store: UsageStore, user: str, since: float, until: float, limit: int
) -> dict[str, Any]:
    """One user's rows in ``[since, until)``, newest first, as ``{"columns": [...], "rows":
    [[...], ...]}`` (compact, and what polars reads straight into a frame)."""
    c = usage_events.c
    q = (
        sa.select(
            c.ts,
            c.model,
            c.endpoint,
            c.status,
            c.prompt_tokens,
            c.completion_tokens,
            c.cpu_seconds,
            c.gpu_seconds,
            c.audio_seconds,
            c.ref,
            c.error_type,
        )
        .where(c.user == user, c.ts >= since, c.ts < until)
        .order_by(c.ts.desc())
        .limit(limit)
    )
    with store.engine.connect() as conn:
        rows = [list(r) for r in conn.execute(q)]
    return {"columns": list(EVENT_COLUMNS), "rows": rows, "truncated": len(rows) >= limit}


#: The columns of :func:`daily_columns`, in order.
DAILY_COLUMNS = (
    "day",
    "user",
    "groups",
    "model",
    "requests",
    "prompt_tokens",
    "completion_tokens",
    "cpu_seconds",
    "gpu_seconds",
    "voice_seconds",
    "cost",
)


def daily_columns(store: UsageStore, prices: Prices, since: float, until: float) -> dict[str, Any]:
    """Everyone's use per UTC day, user, groups and model in ``[since, until)`` (whole days),
    with the weighted cost: what the operator's dashboard aggregates (by user, group, model and
    day) with polars."""
    t = usage_daily
    since, until = utc_day(since), utc_day(until - 1) + 86400
    keys = [t.c.day, t.c.user, t.c.groups, t.c.model]
    q = (
        sa.select(*_sums(t, prices, *keys))
        .where(*_filters(t, None, None, since, until))
        .group_by(*keys)
        .order_by(t.c.day)
    )
    with store.engine.connect() as conn:
        rows = [
            [
                r.day,
                r.user,
                r.groups,
                r.model,
                int(r.requests or 0),
                int(r.prompt_tokens),
                int(r.completion_tokens),
                float(r.cpu_seconds),
                float(r.gpu_seconds),
                float(r.voice_seconds),
                round(float(r.cost), 6),
            ]
            for r in conn.execute(q)
        ]
    return {"columns": list(DAILY_COLUMNS), "rows": rows, "since": iso(since), "until": iso(until)}


#: The columns of :func:`dashboard_columns`' ``series``, in order.
SERIES_COLUMNS = (
    "day",
    "model",
    "groups",
    "cost_user",
    "cpu_user",
    "tokens",
    "cost",
    "cpu_seconds",
    "voice_seconds",
)
#: Users a chart names one by one (the rest are summed as :data:`OTHERS`).
CHART_USERS = 7
OTHERS = "(others)"


#: A day's sums are final this long after it ends (a request observed just before midnight is
#: written a moment later): the days before are kept in :attr:`UsageStore.memo`.
LATE_SECONDS = 600.0
_MEMO_SIZE = 32


def dashboard_columns(
    store: UsageStore, prices: Prices, since: float, until: float, now: float
) -> dict[str, Any]:
    """What the operator's dashboard shows, summed in SQL over the daily sums:

    - ``rows`` (:data:`DAILY_COLUMNS`): per user, groups and model, every unit and the cost,
      summed per *span*: ``day`` is the start of the span the row sums, the spans split at the
      window's first day, the current UTC month's and today's, so the window's tables (per user,
      group and model) and each budget's current day or month come from one small result;
    - ``series`` (:data:`SERIES_COLUMNS`): per day, model and groups, tokens, cost, CPU and voice
      seconds, with the :data:`CHART_USERS` users of most cost and of most CPU named
      (``cost_user``, ``cpu_user``) and everyone else :data:`OTHERS`: the charts per day.

    Rows are written with the time they happen, so a day's sums stop changing once it is over
    (:data:`LATE_SECONDS` later): the sums of those days are kept (:attr:`UsageStore.memo`, per
    window and prices) and only the days since are read again. Costs are the operator's prices
    applied to each model's sums.
    """
    since, until = utc_day(since), utc_day(until - 1) + 86400
    today = utc_day(now)
    bounds = sorted({since, period_start("month", now), today})
    lo, hi = bounds[0], max(until, today + 86400)
    closed = min(max(utc_day(now - LATE_SECONDS), lo), hi)
    price_key = prices.model_dump_json()
    key: tuple[Any, ...] = ("spans", tuple(bounds), closed, price_key)
    old = _memo(store, key, lambda: _span_sums(store, prices, bounds, lo, closed))
    rows = _merge(old, _span_sums(store, prices, bounds, closed, hi))
    # who the charts name: most cost and most CPU in the window
    cost: dict[str, float] = {}
    cpu: dict[str, float] = {}
    for r in rows:
        if since <= r[0] < until:
            cost[r[1]] = cost.get(r[1], 0.0) + r[10]
            cpu[r[1]] = cpu.get(r[1], 0.0) + r[7]
    top_cost = tuple(sorted(u for u, v in _top(cost)))
    top_cpu = tuple(sorted(u for u, v in _top(cpu)))
    end = max(since, min(closed, until))
    key = ("series", since, end, top_cost, top_cpu, price_key)
    series = _memo(store, key, lambda: _series(store, prices, since, end, top_cost, top_cpu))
    series = series + _series(store, prices, end, until, top_cost, top_cpu)
    return {
        "columns": list(DAILY_COLUMNS),
        "rows": rows,
        "series": {"columns": list(SERIES_COLUMNS), "rows": series},
        "since": iso(since),
        "until": iso(until),
    }


def _top(used: dict[str, float]) -> list[tuple[str, float]]:
    ranked = sorted(used.items(), key=lambda kv: (-kv[1], kv[0]))
    return [(u, v) for u, v in ranked if v > 0][:CHART_USERS]


_making: dict[tuple[int, tuple[Any, ...]], threading.Lock] = {}
_making_lock = threading.Lock()


def _memo(store: UsageStore, key: tuple[Any, ...], make: Any) -> Any:
    """``make()`` kept in ``store.memo`` under ``key``; a caller that asks while another thread
    makes the same key (the background warm, :func:`warm_dashboard`) waits for its result
    instead of summing the same days again."""
    memo = store.memo
    if key in memo:
        return memo[key]
    with _making_lock:
        lock = _making.setdefault((id(store), key), threading.Lock())
    try:
        with lock:
            if key in memo:
                return memo[key]
            value = memo[key] = make()
    finally:
        with _making_lock:
            _making.pop((id(store), key), None)
    for old in list(memo)[:-_MEMO_SIZE]:  # the oldest first (list() is atomic: threads share it)
        memo.pop(old, None)
    return value


#: The windows the operator's dashboard offers, in days back from now (its day, week and
#: month: ``oraculo.hub.dashboard.data.PERIODS``).
DASHBOARD_DAYS = (1, 7, 30)
#: The background warm runs this often (a new top user in today's use changes the charts' key)
#: and just after each UTC midnight and :data:`LATE_SECONDS` after it (the kept days move on).
WARM_EVERY = 300.0


def warm_dashboard(store: UsageStore, prices: Prices, now: float) -> None:
    """Sum what the operator's dashboard's windows keep (:func:`dashboard_columns` for each of
    :data:`DASHBOARD_DAYS`, asked as the dashboard asks), so no operator's view pays for it."""
    for days in DASHBOARD_DAYS:
        dashboard_columns(store, prices, now - days * 86400, now + 1, now)


def next_warm(now: float) -> float:
    """Seconds until the next :func:`warm_dashboard`: :data:`WARM_EVERY`, or sooner, a second
    after the next UTC midnight or :data:`LATE_SECONDS` after a midnight, when the kept days'
    keys change."""
    today = utc_day(now)
    moments = [today + 86400 + 1, today + LATE_SECONDS + 1]
    return min([WARM_EVERY] + [m - now for m in moments if m > now])


def _span_sums(
    store: UsageStore, prices: Prices, bounds: list[float], lo: float, hi: float
) -> list[list[Any]]:
    """Per span (the last of ``bounds`` at or before the day), user, groups and model, in
    ``[lo, hi)``: rows of :data:`DAILY_COLUMNS`."""
    if hi <= lo:
        return []
    d = usage_daily.c
    span: sa.ColumnElement[Any] = sa.literal(bounds[0])
    for b in bounds[1:]:
        span = sa.case((d.day >= b, sa.literal(b)), else_=span)
    # the span computed per row in a subquery, then grouped by name: PostgreSQL groups by an
    # expression only when it is the same, parameters included
    spans = (
        sa.select(span.label("span"), d.user, d.groups, d.model, *(d[k] for k in _SUMMED))
        .where(d.day >= lo, d.day < hi)
        .subquery()
    )
    t = spans.c
    q = sa.select(t.span, t.user, t.groups, t.model, *(sa.func.sum(t[k]) for k in _SUMMED))
    q = q.group_by(t.span, t.user, t.groups, t.model)
    with store.engine.connect() as conn:
        rows = conn.execute(q).all()
    out = []
    for span_, user, groups, model, requests, prompt, completion, cpu, gpu, voice in rows:
        tokens = int(prompt or 0) + int(completion or 0)
        cost = prices.cost(model, tokens, cpu or 0.0, gpu or 0.0, voice or 0.0)
        out.append(
            [
                float(span_),
                user,
                groups,
                model,
                int(requests or 0),
                int(prompt or 0),
                int(completion or 0),
                float(cpu or 0.0),
                float(gpu or 0.0),
                float(voice or 0.0),
                round(cost, 6),
            ]
        )
    return out


def _merge(a: list[list[Any]], b: list[list[Any]]) -> list[list[Any]]:
    """Rows of :data:`DAILY_COLUMNS` with the same day, user, groups and model summed."""
    if not a or not b:
        return a + b
    out: dict[tuple[Any, ...], list[Any]] = {tuple(r[:4]): list(r) for r in a}
    for r in b:
        have = out.get(tuple(r[:4]))
        if have is None:
            out[tuple(r[:4])] = list(r)
        else:
            for i in range(4, len(r)):
                have[i] += r[i]
            have[10] = round(have[10], 6)
    return list(out.values())


def _series(
    store: UsageStore,
    prices: Prices,
    lo: float,
    hi: float,
    top_cost: tuple[str, ...],
    top_cpu: tuple[str, ...],
) -> list[list[Any]]:
    """Per day, model, groups and the named users in ``[lo, hi)``: rows of
    :data:`SERIES_COLUMNS`."""
    if hi <= lo:
        return []
    d = usage_daily.c
    others = sa.literal(OTHERS)
    cost_user = sa.case((d.user.in_(top_cost), d.user), else_=others) if top_cost else others
    cpu_user = sa.case((d.user.in_(top_cpu), d.user), else_=others) if top_cpu else others
    named = (
        sa.select(
            d.day,
            d.model,
            d.groups,
            cost_user.label("cost_user"),
            cpu_user.label("cpu_user"),
            d.prompt_tokens,
            d.completion_tokens,
            d.cpu_seconds,
            d.gpu_seconds,
            d.audio_seconds,
        )
        .where(d.day >= lo, d.day < hi)
        .subquery()
    )
    n = named.c
    keys = (n.day, n.model, n.groups, n.cost_user, n.cpu_user)
    sums = (n.prompt_tokens, n.completion_tokens, n.cpu_seconds, n.gpu_seconds, n.audio_seconds)
    q = sa.select(*keys, *(sa.func.sum(c) for c in sums)).group_by(*keys).order_by(n.day)
    with store.engine.connect() as conn:
        rows = conn.execute(q).all()
    out = []
    for day, model, groups, cu, pu, prompt, completion, cpu, gpu, voice in rows:
        tokens = int(prompt or 0) + int(completion or 0)
        cost = prices.cost(model, tokens, cpu or 0.0, gpu or 0.0, voice or 0.0)
        out.append(
            [
                float(day),
                model,
                groups,
                cu,
                pu,
                tokens,
                round(cost, 6),
                float(cpu or 0.0),
                float(voice or 0.0),
            ]
        )
    return out


def refusals(store: UsageStore, since: float, until: float) -> list[dict[str, Any]]:
    """Requests refused for rate limits, quotas and budgets (status 429) in ``[since, until)``,
    per user and kind, most first."""
    c = usage_events.c
    q = (
        sa.select(c.user, c.error_type, sa.func.count(), sa.func.max(c.ts))
        # a literal 429, so the partial index on refused rows applies (SQLite and PostgreSQL)
        .where(c.status == sa.literal_column("429"), c.ts >= since, c.ts < until)
        # by the column itself: PostgreSQL does not match coalesce(x, $1) to coalesce(x, $2)
        .group_by(c.user, c.error_type)
    )
    per: dict[tuple[str, str], list[float]] = {}
    with store.engine.connect() as conn:
        for user, kind, count, last in conn.execute(q):
            seen = per.setdefault((user, kind or "rate_limit"), [0, 0.0])
            seen[0] += int(count)
            seen[1] = max(seen[1], float(last))
    ranked = sorted(per.items(), key=lambda kv: (-kv[1][0], kv[0][0], kv[0][1]))
    return [
        {"user": user, "type": kind, "count": int(n), "last": iso(last)}
        for (user, kind), (n, last) in ranked
    ]


def recent_kernels(store: UsageStore, since: float) -> list[dict[str, Any]]:
    """Kernels whose compute was reported since ``since`` (user servers report running
    kernels every few seconds while they work): user, kernel id and name, seconds, last report."""
    c = usage_events.c
    q = (
        sa.select(
            c.user,
            c.ref,
            c.model,
            sa.func.sum(c.cpu_seconds).label("cpu_seconds"),
            sa.func.sum(c.gpu_seconds).label("gpu_seconds"),
            sa.func.max(c.ts).label("last"),
        )
        .where(c.endpoint == "kernel", c.ts >= since)
        .group_by(c.user, c.ref, c.model)
        .order_by(c.user, sa.func.max(c.ts).desc())
    )
    with store.engine.connect() as conn:
        return [
            {
                "user": r.user,
                "kernel_id": r.ref,
                "kernel_name": r.model,
                "cpu_seconds": round(float(r.cpu_seconds or 0), 3),
                "gpu_seconds": round(float(r.gpu_seconds or 0), 3),
                "last": iso(float(r.last)),
            }
            for r in conn.execute(q)
        ]
