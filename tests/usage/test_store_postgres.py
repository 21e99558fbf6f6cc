"""The usage store, its daily sums and budgets on a real PostgreSQL (the scale-out path)."""

from __future__ import annotations

import threading
from collections.abc import Iterator

import pytest

from oraculo.hub.database import sqlalchemy_url
from oraculo.models.auth import Identity
from oraculo.models.budgets import Budget, BudgetExceeded, Budgets
from oraculo.models.metering import UsageEvent, UsageStore
from oraculo.models.usage import Prices, period_end, period_start, refusals, summary
from tests.scaleout.postgres import PostgresServer
from tests.usage.test_store import dashboard_matches_the_rows


@pytest.fixture(scope="module")
def pg_server() -> Iterator[PostgresServer]:
    server = PostgresServer().start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture(scope="module")
def pg_url(pg_server: PostgresServer) -> str:
    return sqlalchemy_url(pg_server.database("usage"))


def test_model_services_starting_at_once_set_up_one_schema(pg_server: PostgresServer) -> None:
    """Several model-service processes starting together against a new database: each makes
    the store's tables if missing, and none fails because another made them at the same time
    (seen once in a run: PostgreSQL's "duplicate key ... pg_type_typname_nsp_index")."""
    url = sqlalchemy_url(pg_server.database("usage_race"))
    starting = threading.Barrier(6)
    errors: list[BaseException] = []

    def start() -> None:
        starting.wait()
        try:
            UsageStore(url).engine.dispose()
        except BaseException as e:
            errors.append(e)

    threads = [threading.Thread(target=start) for _ in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert errors == []


async def test_daily_sums_and_budgets_on_postgresql(pg_url: str) -> None:
    store = UsageStore(pg_url)
    prices = Prices(per_1k_tokens=1.0, models={"big": 4.0}, per_cpu_hour=3600.0)
    now = 1_800_000_000.0
    events = [
        UsageEvent("ada", "big", "chat.completions", 200, 500, 500, groups=",g_1,", ts=now),
        UsageEvent("ada", "big", "chat.completions", 200, 100, 0, groups=",g_1,", ts=now + 1),
        UsageEvent("ada", "kernel", "kernel", 200, cpu_seconds=2.5, groups=",g_1,", ts=now + 2),
    ]
    store.record_many(events[:2])
    store.record(events[2])  # the same day and key as earlier rows: summed, not duplicated
    since, until = period_start("month", now), period_end("month", now)
    by_day = summary(store, prices, group="g_1", since=since, until=until, by_user=True)
    by_row = summary(store, prices, group="g_1", since=since + 1, until=until, by_user=True)
    assert by_day["totals"] == by_row["totals"]
    assert by_day["totals"]["tokens"] == 1100 and by_day["totals"]["cpu_seconds"] == 2.5
    assert by_day["totals"]["cost"] == pytest.approx(1.1 * 4.0 + 2.5)
    budgets = Budgets(store, prices)
    await budgets.put(Budget(scope="group", name="g_1", period="day", unit="cost", limit=5), "t")
    with pytest.raises(BudgetExceeded, match="daily cost budget of group g_1"):
        await budgets.check(Identity("bo", groups=("g_1",)), ["tokens"], now=now + 10)
    store.close()


def test_the_dashboards_sums_on_postgresql(pg_url: str) -> None:
    """The dashboard's SQL (spans and the charts' named users grouped from subqueries) runs on
    PostgreSQL and agrees with every user-day-model row."""
    store = UsageStore(pg_url)
    now = 1_800_000_000.0
    events = []
    for i in range(9):
        for ago in (0.01, 1, 3):
            g = ",g0,g1," if i == 0 else f",g{i % 2},"
            events += [
                UsageEvent(f"p{i}", "big", "chat.completions", 200, 10 * i, 1, groups=g),
                UsageEvent(f"p{i}", "kernel", "kernel", 200, cpu_seconds=i + 1.0, groups=g),
                UsageEvent(f"p{i}", "whisper", "audio.transcriptions", 200, audio_seconds=2.0),
            ]
            for e in events[-3:]:
                e.ts = now - ago * 86400
    store.record_many(events)
    refused = UsageEvent("p1", "big", "chat.completions", 429, error_type="budget_exceeded")
    refused.ts = now - 5
    store.record(refused)
    prices = Prices(per_1k_tokens=1.0, models={"big": 4.0}, per_cpu_hour=3600.0)
    dashboard_matches_the_rows(store, prices, now)
    assert refusals(store, now - 86400, now + 1)[0]["type"] == "budget_exceeded"
    store.close()
