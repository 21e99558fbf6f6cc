"""Usage records (sqlite by default, any SQLAlchemy URL such as PostgreSQL) and rate limits/quotas.

One ``usage_events`` table holds all three units of use:

- model tokens: every request that got past authentication leaves one row (user, model, endpoint,
  prompt and completion tokens, latency, time to first token, status and error type);
- voice: the audio endpoints' rows also carry ``audio_seconds`` (heard or spoken);
- kernel compute: user servers report their kernels' CPU (and GPU) seconds as they run
  (``endpoint = "kernel"``, ``cpu_seconds``/``gpu_seconds``, ``ref`` = the kernel id).

Each row also carries the user's hub groups at the time (``groups``, as ``,a,b,``), so one query
answers what a user or a group used in a period (:mod:`oraculo.models.usage`).

Limits are checked before any work and charged after it (tokens are only known then):
requests/minute and tokens/minute over a sliding minute, tokens/day since UTC midnight. A user's own
limits come from ``user_limits[name]`` or ``user_limits["*"]``; each ``group_limits[group]`` applies
to the whole group together (a cohort's shared budget). A user's or a group's day total is seeded
from the store on first use, so neither a restart nor a second process resets a daily quota. The
minute windows live in each process's memory: behind N model-service processes a per-minute limit
lets up to N times as much through (the budgets of :mod:`.budgets` are read from the store)."""

from __future__ import annotations

import asyncio
import collections
import contextlib
import dataclasses
import datetime as dt
import time
from collections.abc import Iterator
from typing import Any

import sqlalchemy as sa

from .auth import Identity
from .errors import QuotaExceeded, RateLimited

metadata = sa.MetaData()
usage_events = sa.Table(
    "usage_events",
    metadata,
    sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
    sa.Column("ts", sa.Float, nullable=False, index=True),
    sa.Column("user", sa.String(255), nullable=False, index=True),
    sa.Column("model", sa.String(255), nullable=False),
    sa.Column("endpoint", sa.String(64), nullable=False),
    sa.Column("prompt_tokens", sa.Integer, nullable=False, default=0),
    sa.Column("completion_tokens", sa.Integer, nullable=False, default=0),
    sa.Column("latency_ms", sa.Float, nullable=False, default=0),
    sa.Column("ttft_ms", sa.Float, nullable=True),
    sa.Column("status", sa.Integer, nullable=False),
    sa.Column("error_type", sa.String(64), nullable=True),
    # seconds of audio transcribed or spoken (audio endpoints only)
    sa.Column("audio_seconds", sa.Float, nullable=True),
    # CPU and GPU seconds of a user's kernels (endpoint "kernel" only)
    sa.Column("cpu_seconds", sa.Float, nullable=True),
    sa.Column("gpu_seconds", sa.Float, nullable=True),
    # the user's hub groups when the work was done, as ",a,b," ("" for none)
    sa.Column("groups", sa.String(1024), nullable=True),
    # what the work belonged to: a kernel id, a conversation, an agent run, an execution
    sa.Column("ref", sa.String(255), nullable=True),
)
sa.Index("ix_usage_user_ts", usage_events.c.user, usage_events.c.ts)
#: The refused requests (429) by time: few rows, so a small partial index (SQLite and
#: PostgreSQL) lets the dashboard list them without reading every row of the period.
refused_index = sa.Index(
    "ix_usage_refused_ts",
    usage_events.c.ts,
    sqlite_where=usage_events.c.status == sa.literal_column("429"),
    postgresql_where=usage_events.c.status == sa.literal_column("429"),
)

#: The same use summed per UTC day, user, groups and model, kept in the same transaction as the
#: rows: what day-aligned questions ("this week", "this month", a budget's use) read, so they
#: cost the number of user-days, not of requests and kernel reports.
usage_daily = sa.Table(
    "usage_daily",
    metadata,
    sa.Column("day", sa.Float, nullable=False),
    sa.Column("user", sa.String(255), nullable=False),
    sa.Column("groups", sa.String(1024), nullable=False),
    sa.Column("model", sa.String(255), nullable=False),
    sa.Column("requests", sa.Integer, nullable=False),
    sa.Column("prompt_tokens", sa.Integer, nullable=False),
    sa.Column("completion_tokens", sa.Integer, nullable=False),
    sa.Column("cpu_seconds", sa.Float, nullable=False),
    sa.Column("gpu_seconds", sa.Float, nullable=False),
    sa.Column("audio_seconds", sa.Float, nullable=False),
    sa.PrimaryKeyConstraint("day", "user", "groups", "model", name="pk_usage_daily"),
    # on SQLite the key is the table: a range of days is read in order, with no row lookups
    sqlite_with_rowid=False,
)
sa.Index("ix_usage_daily_user_day", usage_daily.c.user, usage_daily.c.day)
_SUMMED = (
    "requests",
    "prompt_tokens",
    "completion_tokens",
    "cpu_seconds",
    "gpu_seconds",
    "audio_seconds",
)


def utc_day(ts: float) -> float:
    """The UTC midnight at or before ``ts``."""
    return ts - ts % 86400


def _daily_rows(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    out: dict[tuple[float, str, str, str], dict[str, Any]] = {}
    for r in rows:
        key = (utc_day(r["ts"]), r["user"], r.get("groups") or "", r["model"])
        d = out.get(key)
        if d is None:
            d = out[key] = dict(zip(("day", "user", "groups", "model"), key, strict=True))
            d.update(dict.fromkeys(_SUMMED, 0))
        d["requests"] += 0 if r["endpoint"] == "kernel" else 1
        d["prompt_tokens"] += r.get("prompt_tokens") or 0
        d["completion_tokens"] += r.get("completion_tokens") or 0
        d["cpu_seconds"] += r.get("cpu_seconds") or 0.0
        d["gpu_seconds"] += r.get("gpu_seconds") or 0.0
        d["audio_seconds"] += r.get("audio_seconds") or 0.0
    return list(out.values())


def add_daily(conn: sa.Connection, rows: list[dict[str, Any]]) -> None:
    """Add rows (``usage_events`` dicts) to ``usage_daily`` (an upsert on SQLite and
    PostgreSQL; read-then-write elsewhere)."""
    daily = _daily_rows(rows)
    if not daily:
        return
    name = conn.dialect.name
    if name in ("sqlite", "postgresql"):
        from sqlalchemy.dialects import postgresql, sqlite

        insert: Any = sqlite.insert if name == "sqlite" else postgresql.insert
        stmt = insert(usage_daily)
        stmt = stmt.on_conflict_do_update(
            index_elements=["day", "user", "groups", "model"],
            set_={k: usage_daily.c[k] + stmt.excluded[k] for k in _SUMMED},
        )
        conn.execute(stmt, daily)
        return
    t = usage_daily.c
    for d in daily:
        key = (t.day == d["day"]) & (t.user == d["user"]) & (t.groups == d["groups"])
        key = key & (t.model == d["model"])
        if conn.execute(sa.select(t.day).where(key)).first() is None:
            conn.execute(usage_daily.insert().values(**d))
        else:
            conn.execute(usage_daily.update().where(key).values({k: t[k] + d[k] for k in _SUMMED}))


@dataclasses.dataclass
class UsageEvent:
    user: str
    model: str
    endpoint: str
    status: int
    prompt_tokens: int = 0
    completion_tokens: int = 0
    latency_ms: float = 0.0
    ttft_ms: float | None = None
    error_type: str | None = None
    audio_seconds: float | None = None
    cpu_seconds: float | None = None
    gpu_seconds: float | None = None
    groups: str | None = None
    ref: str | None = None
    ts: float = dataclasses.field(default_factory=time.time)


def groups_column(groups: tuple[str, ...] | list[str]) -> str:
    """A user's groups as stored in ``usage_events.groups``: ``,a,b,`` (``""`` for none), so
    ``groups LIKE '%,a,%'`` finds a group's rows."""
    return f",{','.join(sorted(groups))}," if groups else ""


#: The PostgreSQL advisory lock every model-service process takes while it sets up the schema.
SCHEMA_LOCK = 0x6F7261636C65


@contextlib.contextmanager
def schema_lock(engine: sa.Engine) -> Iterator[None]:
    """Set up tables one process at a time where several share one PostgreSQL database.

    Two model-service processes starting at once against a new database would both find no
    table and both ``CREATE TABLE``; the second fails on PostgreSQL's catalogue (seen in a test
    run: ``duplicate key value violates unique constraint "pg_type_typname_nsp_index"``). With
    this lock held, the second waits, then finds the tables made. SQLite needs nothing: one
    writer at a time already."""
    if engine.dialect.name != "postgresql":
        yield
        return
    with engine.connect() as conn:
        conn.execute(sa.text("SELECT pg_advisory_lock(:key)"), {"key": SCHEMA_LOCK})
        conn.commit()
        try:
            yield
        finally:
            conn.execute(sa.text("SELECT pg_advisory_unlock(:key)"), {"key": SCHEMA_LOCK})
            conn.commit()


class UsageStore:
    """Append-only usage events. Calls are blocking; the async wrappers run them in a thread."""

    def __init__(self, url: str) -> None:
        self.url = url
        connect_args = {"check_same_thread": False} if url.startswith("sqlite") else {}
        self.engine = sa.create_engine(url, connect_args=connect_args, future=True)
        #: Sums over days that are over (they no longer change), by query: see
        #: :func:`oraculo.models.usage.dashboard_columns`.
        self.memo: dict[Any, Any] = {}
        if url.startswith("sqlite"):
            with self.engine.begin() as conn:
                conn.exec_driver_sql("PRAGMA journal_mode=WAL")
        with schema_lock(self.engine):
            metadata.create_all(self.engine)
            self._add_missing_columns()
            refused_index.create(self.engine, checkfirst=True)  # a store from before it
            self._backfill_daily()

    def _add_missing_columns(self) -> None:
        """Columns added after a store was first created (``audio_seconds``) are added in place."""
        have = {c["name"] for c in sa.inspect(self.engine).get_columns("usage_events")}
        with self.engine.begin() as conn:
            for column in usage_events.columns:
                if column.name not in have and column.nullable:
                    kind = column.type.compile(dialect=self.engine.dialect)
                    conn.exec_driver_sql(
                        f"ALTER TABLE usage_events ADD COLUMN {column.name} {kind}"
                    )

    def _backfill_daily(self) -> None:
        """A store from before ``usage_daily`` gets its days summed once, from its rows."""
        with self.engine.begin() as conn:
            if conn.execute(sa.select(usage_daily.c.day).limit(1)).first() is not None:
                return
            if conn.execute(sa.select(usage_events.c.id).limit(1)).first() is None:
                return
            result = conn.execute(sa.select(usage_events))
            while chunk := result.fetchmany(50_000):
                add_daily(conn, [dict(r._mapping) for r in chunk])

    def close(self) -> None:
        self.engine.dispose()

    def record(self, event: UsageEvent) -> None:
        row = dataclasses.asdict(event)
        with self.engine.begin() as conn:
            conn.execute(usage_events.insert().values(**row))
            add_daily(conn, [row])

    async def arecord(self, event: UsageEvent) -> None:
        await asyncio.to_thread(self.record, event)

    def record_many(self, events: list[UsageEvent]) -> None:
        if events:
            rows = [dataclasses.asdict(e) for e in events]
            with self.engine.begin() as conn:
                conn.execute(usage_events.insert(), rows)
                add_daily(conn, rows)

    def tokens_since(self, user: str | None, since: float, group: str | None = None) -> int:
        """Tokens ``user`` (or, with ``group``, every member of that group) used since ``since``."""
        c = usage_events.c
        where = [c.ts >= since]
        if user is not None:
            where.append(c.user == user)
        if group is not None:
            escaped = group.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")
            where.append(c.groups.like(f"%,{escaped},%", escape="\\"))
        q = sa.select(
            sa.func.coalesce(sa.func.sum(c.prompt_tokens + c.completion_tokens), 0)
        ).where(*where)
        with self.engine.connect() as conn:
            return int(conn.execute(q).scalar_one())

    def query(self, user: str | None, since: float | None, limit: int) -> dict[str, Any]:
        """Recent events (newest first) and per-user/model totals, for one user or everyone."""
        c = usage_events.c
        where = []
        if user is not None:
            where.append(c.user == user)
        if since is not None:
            where.append(c.ts >= since)
        events = sa.select(usage_events).where(*where).order_by(c.ts.desc()).limit(limit)
        totals = (
            sa.select(
                c.user,
                c.model,
                sa.func.count().label("requests"),
                sa.func.sum(c.prompt_tokens).label("prompt_tokens"),
                sa.func.sum(c.completion_tokens).label("completion_tokens"),
                sa.func.sum(c.audio_seconds).label("audio_seconds"),
                sa.func.sum(c.cpu_seconds).label("cpu_seconds"),
                sa.func.sum(c.gpu_seconds).label("gpu_seconds"),
            )
            .where(*where)
            .group_by(c.user, c.model)
            .order_by(c.user, c.model)
        )
        with self.engine.connect() as conn:
            return {
                "data": [dict(r._mapping) for r in conn.execute(events)],
                "totals": [dict(r._mapping) for r in conn.execute(totals)],
            }

    async def aquery(self, user: str | None, since: float | None, limit: int) -> dict[str, Any]:
        return await asyncio.to_thread(self.query, user, since, limit)


@dataclasses.dataclass(frozen=True)
class Limits:
    requests_per_minute: int | None = None
    tokens_per_minute: int | None = None
    tokens_per_day: int | None = None

    @classmethod
    def of(cls, d: dict[str, Any] | None) -> Limits | None:
        return cls(**d) if d else None


class _Window:
    """Requests and tokens of one key over the last minute, and its tokens today."""

    def __init__(self) -> None:
        self.requests: collections.deque[float] = collections.deque()
        self.tokens: collections.deque[tuple[float, int]] = collections.deque()
        self.token_sum = 0
        self.day = ""
        self.day_tokens = 0
        self.seeded = False

    def prune(self, now: float) -> None:
        while self.requests and self.requests[0] <= now - 60:
            self.requests.popleft()
        while self.tokens and self.tokens[0][0] <= now - 60:
            self.token_sum -= self.tokens.popleft()[1]
        today = _utc_day(now)
        if today != self.day:
            self.day, self.day_tokens = today, 0


def _utc_day(ts: float) -> str:
    return dt.datetime.fromtimestamp(ts, dt.UTC).strftime("%Y-%m-%d")


def _midnight(ts: float) -> float:
    d = dt.datetime.fromtimestamp(ts, dt.UTC).replace(hour=0, minute=0, second=0, microsecond=0)
    return d.timestamp()


class RateLimiter:
    """Per-user and per-group requests/min, tokens/min and tokens/day."""

    def __init__(
        self,
        user_limits: dict[str, dict[str, Any]],
        group_limits: dict[str, dict[str, Any]],
        store: UsageStore | None = None,
    ) -> None:
        self.user_limits = {k: Limits(**v) for k, v in user_limits.items()}
        self.group_limits = {k: Limits(**v) for k, v in group_limits.items()}
        self.store = store
        self._windows: dict[str, _Window] = collections.defaultdict(_Window)

    def _applicable(self, who: Identity) -> list[tuple[str, Limits]]:
        out = []
        own = self.user_limits.get(who.name) or self.user_limits.get("*")
        if own:
            out.append((f"user:{who.name}", own))
        for g in who.groups:
            if g in self.group_limits:
                out.append((f"group:{g}", self.group_limits[g]))
        return out

    async def check(self, who: Identity, now: float | None = None) -> None:
        """Raise 429 (with retry_after) when a limit is spent; else count the request."""
        now = now or time.time()
        applicable = self._applicable(who)
        for key, lim in applicable:
            w = self._windows[key]
            w.prune(now)
            if lim.tokens_per_day is not None and not w.seeded and self.store:
                # a user's or a whole group's tokens today, from the store (a restart, or
                # another model-service process, does not reset a daily quota)
                kind, _, name = key.partition(":")
                w.day_tokens = await asyncio.to_thread(
                    self.store.tokens_since,
                    name if kind == "user" else None,
                    _midnight(now),
                    name if kind == "group" else None,
                )
                w.seeded = True
            scope = key.replace(":", " ", 1)
            if lim.requests_per_minute is not None and len(w.requests) >= lim.requests_per_minute:
                raise RateLimited(
                    f"Rate limit reached for {scope}: "
                    f"{lim.requests_per_minute} requests per minute.",
                    retry_after=max(1.0, w.requests[0] + 60 - now),
                )
            if lim.tokens_per_minute is not None and w.token_sum >= lim.tokens_per_minute:
                raise RateLimited(
                    f"Rate limit reached for {scope}: {lim.tokens_per_minute} tokens per minute.",
                    retry_after=max(1.0, w.tokens[0][0] + 60 - now),
                )
            if lim.tokens_per_day is not None and w.day_tokens >= lim.tokens_per_day:
                raise QuotaExceeded(
                    f"Daily token quota reached for {scope}: {lim.tokens_per_day} tokens per day.",
                    retry_after=max(1.0, _midnight(now) + 86400 - now),
                )
        for key, _ in applicable:
            self._windows[key].requests.append(now)

    def charge(self, who: Identity, tokens: int, now: float | None = None) -> None:
        """Count the tokens a finished request used."""
        if tokens <= 0:
            return
        now = now or time.time()
        for key, _ in self._applicable(who):
            w = self._windows[key]
            w.prune(now)
            w.tokens.append((now, tokens))
            w.token_sum += tokens
            w.day_tokens += tokens
