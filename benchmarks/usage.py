"""Usage queries over 1 M rows, and what recording usage adds to a request.

    python -m benchmarks.usage                 # 1,000,000 synthetic rows in a fresh sqlite file
    python -m benchmarks.usage --rows 200000 --repeat 20
    python -m benchmarks.usage --db /tmp/usage.sqlite   # keep the filled file; reuse it next time

Queries: the usage store (``oraculo.models.metering``) is filled with **synthetic** rows (500
users in 25 groups, chat/embedding/transcription requests and, most of them, kernel reports
every 10 s, over the last 30 days, in time order, through ``record_many``), then the queries
the Usage panel and an operator's view make run ``--repeat`` times each through
:mod:`oraculo.models.usage`: one user's last 7 days, one group's last 7 days per user,
everyone's last 30 days per user and model (top spenders), one user's 30 days of rows, a
group budget's first read (30 days), and the operator's dashboard's month (its data from the
store, then polars per user, group and model). Windows are whole UTC days (as every period
is), the last 7 and 30 ending tomorrow, so the numbers do not depend on the day of the month;
the dashboard's month is the window it asks for (30 days back from now). ``dashboard_month``
is each time the first view after the model service's background warm of the dashboard's
windows (``warm_dashboard``, untimed), what an operator meets; ``dashboard_month_cold`` the
same view with nothing kept (what the warm pays, off any view).
The baseline is the same aggregation in polars over the rows already in memory (what a
dashboard holding every row would do), timed in the same run.

Recording: ``ModelService.observe`` (what every request's ``on_finish`` calls: metrics, the
budget charge, the usage row handed to a thread) is timed per call on the event loop, against
the same call with metering off (``identity=None``: metrics only).

Prints one JSON line per measurement and writes them to ``benchmarks/results/usage-<time>.json``.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import random
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

import polars as pl
import sqlalchemy as sa

from oraculo.hub.dashboard.data import by, daily_frame, shape
from oraculo.models.auth import Identity, StaticKeyAuthenticator
from oraculo.models.budgets import Budgets
from oraculo.models.metering import (
    _SUMMED,
    RateLimiter,
    UsageEvent,
    UsageStore,
    usage_daily,
    usage_events,
    utc_day,
)
from oraculo.models.service import ModelService
from oraculo.models.usage import (
    Prices,
    daily_columns,
    dashboard_columns,
    events_columns,
    recent_kernels,
    refusals,
    summary,
    totals,
    warm_dashboard,
)

PRICES = Prices(per_1k_tokens=0.002, per_cpu_hour=0.05, per_gpu_hour=2.0, per_voice_minute=0.006)
MODELS = ["smollm2-135m-instruct", "big-upstream", "all-minilm-l6-v2", "whisper-tiny.en", "kernel"]


def fill(store: UsageStore, rows: int, now: float, users: int, seed: int = 7) -> float:
    """``rows`` rows over the last 30 days, inserted in bulk (one ``executemany`` per 50,000
    rows), then their daily sums made in one ``INSERT … SELECT … GROUP BY``: the same tables
    ``record_many`` writes row by row, in seconds instead of minutes."""
    rnd = random.Random(seed)
    groups = [f"cohort-{g}" for g in range(max(1, users // 20))]
    times = sorted(now - rnd.random() * 30 * 86400 for _ in range(rows))
    t0 = time.perf_counter()
    batch: list[dict[str, Any]] = []
    with store.engine.begin() as conn:
        for i, ts in enumerate(times):
            u = rnd.randrange(users)
            r: dict[str, Any] = {
                "ts": ts,
                "user": f"user{u}",
                "groups": f",{groups[u % len(groups)]},",
                "status": 200,
                "prompt_tokens": 0,
                "completion_tokens": 0,
                "latency_ms": 0.0,
                "audio_seconds": None,
                "cpu_seconds": None,
                "ref": None,
            }
            kind = rnd.random()
            if kind < 0.3:
                r["model"], r["endpoint"] = MODELS[rnd.randrange(2)], "chat.completions"
                r["prompt_tokens"] = rnd.randrange(20, 2000)
                r["completion_tokens"] = rnd.randrange(1, 500)
            elif kind < 0.4:
                r["model"], r["endpoint"] = MODELS[2], "embeddings"
                r["prompt_tokens"] = rnd.randrange(5, 300)
            elif kind < 0.45:
                r["model"], r["endpoint"] = MODELS[3], "audio.transcriptions"
                r["audio_seconds"] = rnd.random() * 15
            else:  # a running kernel reports every 10 s: most rows are these
                r["model"], r["endpoint"] = "oraculo", "kernel"
                r["cpu_seconds"], r["ref"] = rnd.random() * 10, f"k{u}-{rnd.randrange(5)}"
            batch.append(r)
            if len(batch) == 50_000 or i == rows - 1:
                conn.execute(usage_events.insert(), batch)
                batch = []
        conn.execute(usage_daily.delete())
        conn.execute(daily_from_events())
    return time.perf_counter() - t0


def daily_from_events() -> Any:
    """``usage_daily`` summed from every row in SQL (what ``add_daily`` keeps up on write)."""
    c = usage_events.c
    day = sa.cast(c.ts / 86400, sa.Integer) * 86400.0  # the UTC midnight (ts > 0)
    groups = sa.func.coalesce(c.groups, "")
    q = sa.select(
        day.label("day"),
        c.user,
        groups.label("groups"),
        c.model,
        sa.func.sum(sa.case((c.endpoint == "kernel", 0), else_=1)),
        sa.func.sum(c.prompt_tokens),
        sa.func.sum(c.completion_tokens),
        sa.func.coalesce(sa.func.sum(c.cpu_seconds), 0.0),
        sa.func.coalesce(sa.func.sum(c.gpu_seconds), 0.0),
        sa.func.coalesce(sa.func.sum(c.audio_seconds), 0.0),
    ).group_by(day, c.user, groups, c.model)
    cols = ["day", "user", "groups", "model", *_SUMMED]
    return usage_daily.insert().from_select(cols, q)


def timed(fn: Any, repeat: int, setup: Any = None) -> dict[str, float]:
    """``fn`` once untimed (page cache, statement cache), then ``repeat`` times, each after
    ``setup()`` (untimed) if given."""
    fn()
    samples = []
    for _ in range(repeat):
        if setup is not None:
            setup()
        t = time.perf_counter()
        fn()
        samples.append((time.perf_counter() - t) * 1000)
    samples.sort()
    return {
        "p50_ms": round(statistics.median(samples), 2),
        "p95_ms": round(samples[max(0, int(len(samples) * 0.95) - 1)], 2),
        "max_ms": round(samples[-1], 2),
    }


def query_suite(store: UsageStore, now: float) -> dict[str, Any]:
    end = utc_day(now) + 86400
    week, month = (end - 7 * 86400, end), (end - 30 * 86400, end)
    # the window the dashboard's month asks for (its now back 30 days, to now)
    view = (now - 30 * 86400, now + 1)
    return {
        "user_week": lambda: summary(store, PRICES, user="user42", since=week[0], until=week[1]),
        "group_week": lambda: summary(
            store, PRICES, group="cohort-7", since=week[0], until=week[1], by_user=True
        ),
        "everyone_month_by_user": lambda: summary(
            store, PRICES, since=month[0], until=month[1], by_user=True
        ),
        "user_month_rows": lambda: events_columns(store, "user42", month[0], month[1], 20000),
        "budget_first_read_group_month": lambda: totals(
            store, PRICES, group="cohort-7", since=month[0]
        ),
        # the operator's dashboard: GET v1/usage/daily (everyone's days, the refusals, the busy
        # kernels), then its polars aggregation per user, group and model; each view the first
        # after the model service's background warm (what an operator meets: see SETUP)
        "dashboard_month": lambda: dashboard(store, now, view),
        # the same with nothing kept: every day summed again (the cost the warm takes off views)
        "dashboard_month_cold": lambda: cold(store, now, view),
        "dashboard_month_all_rows_to_polars": lambda: dashboard_baseline(store, now, view),
    }


def setups(store: UsageStore, now: float) -> dict[str, Any]:
    """Untimed before each sample: ``dashboard_month`` starts from nothing kept, then the model
    service's background warm (``warm_dashboard``: the day, week and month), as after a
    restart or a midnight."""

    def after_warm() -> None:
        store.memo.clear()
        warm_dashboard(store, PRICES, now)

    return {"dashboard_month": after_warm}


def dashboard(store: UsageStore, now: float, month: tuple[float, float]) -> Any:
    """The operator's dashboard's month: what ``GET v1/usage/daily`` reads (sums per user,
    groups, model and span, the charts' series, the refusals, the busy kernels), then the
    dashboard's polars shaping (per user, group and model, the charts, the budgets)."""
    data = dashboard_columns(store, PRICES, month[0], month[1], now)
    refusals(store, month[0], month[1])
    recent_kernels(store, now - 900)
    return shape(data, month[0], now)


def cold(store: UsageStore, now: float, month: tuple[float, float]) -> Any:
    store.memo.clear()
    return dashboard(store, now, month)


def dashboard_baseline(store: UsageStore, now: float, month: tuple[float, float]) -> Any:
    """The same before the sums moved to SQL: every user-day-model row to polars."""
    days = daily_columns(store, PRICES, month[0], month[1])
    refusals(store, month[0], month[1])
    recent_kernels(store, now - 900)
    df = daily_frame(days)
    return [by(df, key) for key in ("user", "group", "model")]


def polars_suite(df: pl.DataFrame, now: float) -> dict[str, Any]:
    end = utc_day(now) + 86400
    w0, w1, m0, m1 = end - 7 * 86400, end, end - 30 * 86400, end
    sums = [
        pl.col("prompt_tokens").sum(),
        pl.col("completion_tokens").sum(),
        pl.col("cpu_seconds").sum(),
        pl.col("audio_seconds").sum(),
    ]
    return {
        "user_week": lambda: (
            df.filter((pl.col("user") == "user42") & pl.col("ts").is_between(w0, w1, closed="left"))
            .group_by("model")
            .agg(sums)
        ),
        "group_week": lambda: (
            df.filter(
                pl.col("groups").str.contains(",cohort-7,", literal=True)
                & pl.col("ts").is_between(w0, w1, closed="left")
            )
            .group_by("user", "model")
            .agg(sums)
        ),
        "everyone_month_by_user": lambda: (
            df.filter(pl.col("ts").is_between(m0, m1, closed="left"))
            .group_by("user", "model")
            .agg(sums)
        ),
        "user_month_rows": lambda: df.filter(
            (pl.col("user") == "user42") & pl.col("ts").is_between(m0, m1, closed="left")
        ).sort("ts", descending=True),
        "budget_first_read_group_month": lambda: (
            df.filter(
                pl.col("groups").str.contains(",cohort-7,", literal=True) & (pl.col("ts") >= m0)
            )
            .group_by("model")
            .agg(sums)
        ),
    }


async def observe_cost(store: UsageStore, calls: int) -> dict[str, Any]:
    auth = StaticKeyAuthenticator(api_keys={"k": {"name": "x"}})
    service = ModelService(
        auth, store, RateLimiter({}, {}, store), logging.getLogger("bench"), Budgets(store, PRICES)
    )
    who = Identity("bench-user", groups=("cohort-1",))
    await service.budgets.used("user:bench-user", "day", time.time())  # a budget's counters read

    def one(identity: Identity | None) -> None:
        service.observe(
            identity=identity,
            endpoint="chat.completions",
            model="smollm2-135m-instruct",
            status=200,
            prompt_tokens=120,
            completion_tokens=40,
            latency_ms=250.0,
            ttft_ms=80.0,
            error_type=None,
        )

    out: dict[str, Any] = {}
    for label, identity in (("metrics_only", None), ("metered", who)):
        samples = []
        for _ in range(calls):
            t = time.perf_counter()
            one(identity)
            samples.append((time.perf_counter() - t) * 1e6)
        await service.drain()
        samples.sort()
        out[label] = {
            "p50_us": round(statistics.median(samples), 1),
            "p95_us": round(samples[int(len(samples) * 0.95) - 1], 1),
            "mean_us": round(statistics.fmean(samples), 1),
        }
    # what the thread does off the request's path: one row written
    out["store_write_per_row_ms"] = timed(
        lambda: store.record_many([]) or service.store.record(_event()), 200
    )["p50_ms"]
    return out


def _event() -> Any:
    return UsageEvent("bench-user", "m", "chat.completions", 200, 10, 10, groups=",cohort-1,")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--rows", type=int, default=1_000_000)
    ap.add_argument("--repeat", type=int, default=30)
    ap.add_argument("--users", type=int, default=500)
    ap.add_argument("--calls", type=int, default=5000)
    ap.add_argument("--out", default="")
    ap.add_argument("--db", default="", help="keep the filled sqlite file here (reused if present)")
    ap.add_argument("--only", default="", help="comma-separated query names to run")
    args = ap.parse_args()
    results: list[dict[str, Any]] = []

    def emit(rec: dict[str, Any]) -> None:
        print(json.dumps(rec), flush=True)
        results.append(rec)

    with tempfile.TemporaryDirectory() as tmp:
        db = Path(args.db) if args.db else Path(tmp) / "usage.sqlite"
        fresh = not db.exists()
        store = UsageStore(f"sqlite:///{db}")
        now = time.time()
        if fresh:
            seconds = round(fill(store, args.rows, now, args.users), 1)
            emit({"what": "fill", "rows": args.rows, "users": args.users, "seconds": seconds})
        else:  # a store filled by an earlier run: its rows end when that run began
            with store.engine.connect() as conn:
                now = float(conn.execute(sa.select(sa.func.max(usage_events.c.ts))).scalar_one())
        only = set(filter(None, args.only.split(",")))
        before = setups(store, now)
        for name, fn in query_suite(store, now).items():
            if only and name not in only:
                continue
            emit(
                {
                    "what": "query",
                    "engine": "oraculo (sqlite)",
                    "query": name,
                    **timed(fn, args.repeat, before.get(name)),
                }
            )
        with store.engine.connect() as conn:
            df = pl.read_database(sa_select(), conn)
        for name, fn in polars_suite(df, now).items():
            if only and name not in only:
                continue
            emit(
                {
                    "what": "query",
                    "engine": "polars in memory",
                    "query": name,
                    **timed(fn, args.repeat),
                }
            )
        emit({"what": "observe", **asyncio.run(observe_cost(store, args.calls))})
        store.close()
    out = Path(args.out or f"benchmarks/results/usage-{time.strftime('%Y%m%d-%H%M%S')}.json")
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(results, indent=1))


def sa_select() -> Any:
    c = usage_events.c
    return sa.select(
        c.ts,
        c.user,
        c.model,
        c.groups,
        c.prompt_tokens,
        c.completion_tokens,
        c.cpu_seconds,
        c.audio_seconds,
    )


if __name__ == "__main__":
    main()
