"""The usage store in three units, and budgets against it, without a server (sqlite files)."""

from __future__ import annotations

import datetime as dt
from pathlib import Path
from typing import Any

import pytest

from oraculo.models.auth import Identity
from oraculo.models.budgets import Budget, BudgetExceeded, Budgets
from oraculo.models.errors import QuotaExceeded
from oraculo.models.metering import RateLimiter, UsageEvent, UsageStore, groups_column, utc_day
from oraculo.models.usage import (
    LATE_SECONDS,
    WARM_EVERY,
    Prices,
    daily_columns,
    dashboard_columns,
    next_warm,
    period_end,
    period_start,
    refusals,
    summary,
    totals,
    warm_dashboard,
)

PRICES = Prices(per_1k_tokens=0.5, models={"big": 2.0}, per_cpu_hour=3.6, per_voice_minute=0.6)
NOW = dt.datetime(2026, 11, 25, 12, 0, tzinfo=dt.UTC).timestamp()  # a Wednesday


@pytest.fixture
def store(tmp_path: Path) -> UsageStore:
    s = UsageStore(f"sqlite:///{tmp_path / 'usage.sqlite'}")
    ev = [
        UsageEvent("ada", "small", "chat.completions", 200, 600, 400, groups=",cs_1,"),
        UsageEvent("ada", "big", "chat.completions", 200, 1000, 0, groups=",cs_1,"),
        UsageEvent("ada", "kernel", "kernel", 200, cpu_seconds=100.0, groups=",cs_1,"),
        UsageEvent("ada", "whisper", "audio.transcriptions", 200, audio_seconds=30.0),
        UsageEvent("bob", "small", "chat.completions", 200, 10, 10, groups=",cs-1,"),
        UsageEvent("bob", "kernel", "kernel", 200, cpu_seconds=7.5, groups=",csx1,"),
    ]
    for e in ev:
        e.ts = NOW - 3600
    old = UsageEvent("ada", "small", "chat.completions", 200, 5000, 0, groups=",cs_1,")
    old.ts = NOW - 30 * 86400
    s.record_many([*ev, old])
    return s


def test_one_query_answers_what_a_user_used_this_week(store: UsageStore) -> None:
    since, until = period_start("week", NOW), period_end("week", NOW)
    assert dt.datetime.fromtimestamp(since, dt.UTC).weekday() == 0
    assert until - since == 7 * 86400
    s = summary(store, PRICES, user="ada", since=since, until=until)
    t = s["totals"]
    assert t["tokens"] == 2000 and t["prompt_tokens"] == 1600 and t["completion_tokens"] == 400
    assert t["cpu_seconds"] == 100.0 and t["voice_seconds"] == 30.0 and t["gpu_seconds"] == 0
    # 1k small tokens at 0.5, 1k big at 2.0, 100 CPU s at 3.6/h, half a voice minute at 0.6/min
    assert t["cost"] == pytest.approx(0.5 + 2.0 + 0.1 + 0.3)
    assert t["requests"] == 3  # kernel reports are not requests
    assert {m["model"] for m in s["models"]} == {"small", "big", "kernel", "whisper"}


def test_a_group_is_its_members_rows_and_names_match_exactly(store: UsageStore) -> None:
    since, until = period_start("week", NOW), period_end("week", NOW)
    # "cs_1" must not match "cs-1" or "csx1" (LIKE wildcards are escaped)
    s = summary(store, PRICES, group="cs_1", since=since, until=until, by_user=True)
    assert [u["user"] for u in s["users"]] == ["ada"]
    assert s["totals"]["cpu_seconds"] == 100.0
    everyone = summary(store, PRICES, since=since, until=until, by_user=True)
    assert [u["user"] for u in everyone["users"]] == ["ada", "bob"]  # top spender first
    month = totals(store, PRICES, user="ada", since=period_start("month", NOW))
    assert month["tokens"] == 2000  # last month's 5000 are not this month's
    assert groups_column(("b", "a")) == ",a,b," and groups_column(()) == ""


async def test_budgets_refuse_by_unit_name_the_budget_and_reset(store: UsageStore) -> None:
    budgets = Budgets(store, PRICES)
    ada = Identity("ada", groups=("cs_1",))
    await budgets.put(
        Budget(scope="user", name="*", period="month", unit="tokens", limit=2000), "t"
    )
    with pytest.raises(BudgetExceeded) as e:
        await budgets.check(ada, ["tokens"], now=NOW)
    msg = e.value.message
    assert "monthly token budget of user ada (2000 tokens)" in msg
    assert "resets at 2026-12-01T00:00:00Z" in msg
    assert e.value.status == 429 and e.value.code == "budget_exceeded"
    assert e.value.retry_after == pytest.approx(period_end("month", NOW) - NOW)
    await budgets.check(ada, ["cpu_seconds"], now=NOW)  # another unit is not bound by it
    # her own budget wins over "*"
    await budgets.put(
        Budget(scope="user", name="ada", period="month", unit="tokens", limit=1e6), "t"
    )
    await budgets.check(ada, ["tokens"], now=NOW)
    # a group's day budget in the weighted unit bounds every unit of its members
    await budgets.put(Budget(scope="group", name="cs_1", period="day", unit="cost", limit=2.5), "t")
    with pytest.raises(BudgetExceeded, match="daily cost budget of group cs_1"):
        await budgets.check(ada, ["voice_seconds"], now=NOW)
    assert await budgets.delete("group", "cs_1", "day", "cost")
    await budgets.check(ada, ["voice_seconds"], now=NOW)
    status = await budgets.status(ada, now=NOW)
    assert {(b["name"], b["exceeded"]) for b in status} == {("ada", False)}


async def test_charges_count_at_once_and_the_store_wins_after_reseed(store: UsageStore) -> None:
    budgets = Budgets(store, PRICES, reseed_seconds=3600)
    bob = Identity("bob", groups=("cs-1",))
    await budgets.put(
        Budget(scope="user", name="bob", period="day", unit="cpu_seconds", limit=10), "t"
    )
    await budgets.check(bob, ["cpu_seconds"], now=NOW)  # 7.5 used
    event = UsageEvent("bob", "kernel", "kernel", 200, cpu_seconds=3.0, groups=",cs-1,", ts=NOW)
    budgets.charge(event)  # counted before the store has it
    with pytest.raises(BudgetExceeded, match="10 cpu_seconds"):
        await budgets.check(bob, ["cpu_seconds", "gpu_seconds"], now=NOW)


def test_config_budgets_do_not_override_the_store(store: UsageStore) -> None:
    budgets = Budgets(store)
    b = {"scope": "user", "name": "ada", "period": "day", "unit": "tokens", "limit": 5}
    budgets.seed([b])
    budgets.seed([{**b, "limit": 99}])
    assert [x.limit for x in budgets._read()] == [5]
    with pytest.raises(ValueError):
        Budget.model_validate({**b, "unit": "bananas"})
    with pytest.raises(ValueError):
        Budget.model_validate({**b, "limit": -1})


def test_day_aligned_questions_read_the_daily_sums_and_agree_with_the_rows(
    store: UsageStore, tmp_path: Path
) -> None:
    from oraculo.models.metering import usage_daily

    since, until = period_start("month", NOW), period_end("month", NOW)
    by_day = summary(store, PRICES, since=since, until=until, by_user=True)
    # a window one second off whole days reads the rows themselves
    by_row = summary(store, PRICES, since=since + 1, until=until - 1, by_user=True)
    assert by_day["totals"] == by_row["totals"] and by_day["users"] == by_row["users"]
    assert by_day["models"] == by_row["models"]
    with store.engine.connect() as conn:
        days = conn.execute(usage_daily.select()).all()
    assert len(days) == 7  # ada x 4 models + bob x 2 this month, ada's old chat last month
    # a store from before the daily sums gets them from its rows when opened
    with store.engine.begin() as conn:
        conn.execute(usage_daily.delete())
    reopened = UsageStore(str(store.url))
    again = summary(reopened, PRICES, since=since, until=until, by_user=True)
    assert again["totals"] == by_day["totals"]


def test_billing_export_per_user_and_per_group(store: UsageStore) -> None:
    import io

    import polars as pl

    from oraculo.models.billing import encode, export_frame

    since, until = period_start("month", NOW), period_end("month", NOW)
    users = export_frame(store, PRICES, since, until, "user")
    assert users["user"].to_list() == ["ada", "bob"]  # most expensive first
    ada = users.row(0, named=True)
    assert ada["tokens"] == 2000 and ada["cpu_seconds"] == 100.0 and ada["voice_seconds"] == 30.0
    assert ada["cost"] == pytest.approx(2.9) and ada["period_start"] == "2026-11-01T00:00:00Z"
    groups = export_frame(store, PRICES, since, until, "group")
    assert set(groups["group"]) == {"cs_1", "cs-1", "csx1"}  # ada's voice row has no group
    cs1 = groups.filter(pl.col("group") == "cs_1").row(0, named=True)
    assert cs1["tokens"] == 2000 and cs1["voice_seconds"] == 0
    csv = encode(users, "csv")
    assert isinstance(csv, bytes) and csv.startswith(b"user,period_start,period_end,requests")
    parquet = encode(groups, "parquet")
    assert isinstance(parquet, bytes)
    assert pl.read_parquet(io.BytesIO(parquet)).equals(groups)


async def test_a_group_daily_quota_is_read_back_from_the_store(tmp_path: Path) -> None:
    """What a cohort used today counts after a restart (or in another process): the limiter
    seeds a group's day total from the store, as it does a user's."""
    store = UsageStore(f"sqlite:///{tmp_path / 'usage.sqlite'}")
    now = NOW
    earlier = [
        UsageEvent(
            "s1", "small", "chat.completions", 200, 300, 300, groups=",cohort,", ts=now - 60
        ),
        UsageEvent("s2", "small", "chat.completions", 200, 200, 0, groups=",cohort,", ts=now - 60),
        # yesterday's and another group's tokens do not count
        UsageEvent(
            "s1", "small", "chat.completions", 200, 9000, 0, groups=",cohort,", ts=now - 86400
        ),
        UsageEvent("x", "small", "chat.completions", 200, 9000, 0, groups=",cohort2,", ts=now - 60),
    ]
    store.record_many(earlier)
    assert store.tokens_since(None, now - 3600, group="cohort") == 800
    limits = {"cohort": {"tokens_per_day": 1000}}
    # a fresh limiter (a restarted service) lets a member in while the group is under its quota
    s3 = Identity("s3", groups=("cohort",))
    await RateLimiter({}, limits, store).check(s3, now)
    store.record(
        UsageEvent("s1", "small", "chat.completions", 200, 200, 0, groups=",cohort,", ts=now - 30)
    )
    with pytest.raises(QuotaExceeded) as e:
        await RateLimiter({}, limits, store).check(s3, now)
    assert "group cohort: 1000 tokens per day" in str(e.value)
    # someone outside the group is not bound by it
    await RateLimiter({}, limits, store).check(Identity("ada", groups=("cohort2",)), now)
    store.close()


def test_the_dashboard_reads_every_day_with_its_cost_and_the_refusals(store: UsageStore) -> None:
    refused = UsageEvent("bob", "small", "chat.completions", 429, error_type="budget_exceeded")
    refused.ts = NOW - 60
    limited = UsageEvent("bob", "small", "chat.completions", 429)
    limited.ts = NOW - 30
    store.record_many([refused, limited])
    since, until = period_start("month", NOW), period_end("day", NOW)
    days = daily_columns(store, PRICES, since, until)
    rows = [dict(zip(days["columns"], r, strict=True)) for r in days["rows"]]
    ada = [r for r in rows if r["user"] == "ada"]
    # this month only (the 30-day-old row is last month), one row per model, costed
    assert {r["model"] for r in ada} == {"small", "big", "kernel", "whisper"}
    assert sum(r["cost"] for r in ada) == pytest.approx(
        totals(store, PRICES, user="ada", since=since, until=until)["cost"]
    )
    assert all(r["day"] == NOW - NOW % 86400 for r in rows)
    assert refusals(store, since, until) == [
        {"user": "bob", "type": "budget_exceeded", "count": 1, "last": "2026-11-25T11:59:00Z"},
        {"user": "bob", "type": "rate_limit", "count": 1, "last": "2026-11-25T11:59:30Z"},
    ]


def dashboard_matches_the_rows(store: UsageStore, prices: Prices, now: float) -> dict[str, Any]:
    """The dashboard's sums from SQL (per span, and per day for the charts), shaped, against
    the same numbers from every user-day-model row (the reference) for a week and this month."""
    from oraculo.hub.dashboard.data import budget_status, by, daily_frame, shape

    budgets = [
        {"scope": "user", "name": "*", "period": "month", "unit": "cost", "limit": 1.0},
        {"scope": "user", "name": "*", "period": "day", "unit": "tokens", "limit": 100},
        {"scope": "group", "name": "g0", "period": "month", "unit": "cpu_seconds", "limit": 50},
    ]
    since = now - 7 * 86400
    daily = dashboard_columns(store, prices, since, now + 1, now)
    got = shape(daily, since, now, budgets)
    ref = daily_frame(daily_columns(store, prices, since, now + 1))
    month = daily_frame(daily_columns(store, prices, period_start("month", now), now + 1))

    def rounded(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
        return [{k: round(v, 6) if isinstance(v, float) else v for k, v in r.items()} for r in rows]

    for key, rows in (("user", got.users), ("group", got.groups), ("model", got.models)):
        assert rounded(rows) == rounded(by(ref, key).to_dicts()), key
    assert rounded(got.budgets) == rounded(budget_status(month, budgets, now))
    # the charts' series add up to the window's totals
    series = daily["series"]
    col = {c: i for i, c in enumerate(series["columns"])}
    for unit in ("tokens", "cost", "cpu_seconds", "voice_seconds"):
        assert sum(r[col[unit]] for r in series["rows"]) == pytest.approx(got.totals[unit])
    return daily


def test_the_dashboards_sums_in_sql_agree_with_the_rows_and_keep_past_days(
    tmp_path: Path,
) -> None:
    s = UsageStore(f"sqlite:///{tmp_path / 'usage.sqlite'}")
    events = []
    for i in range(10):  # ten users in two groups (one in both), over three days and last month
        groups = groups_column(["g0", "g1"] if i == 0 else [f"g{i % 2}"])
        for ago in (0.1, 1, 2, 40):
            ts = NOW - ago * 86400
            events += [
                UsageEvent(f"u{i}", "small", "chat.completions", 200, 10 * i, 5, groups=groups),
                UsageEvent(f"u{i}", "big", "chat.completions", 200, 100, i, groups=groups),
                UsageEvent(f"u{i}", "kernel", "kernel", 200, cpu_seconds=i + 0.5, groups=groups),
                UsageEvent(f"u{i}", "whisper", "audio.transcriptions", 200, audio_seconds=i),
            ]
            for e in events[-4:]:
                e.ts = ts
    s.record_many(events)
    daily = dashboard_matches_the_rows(s, PRICES, NOW)
    series = [
        dict(zip(daily["series"]["columns"], r, strict=True)) for r in daily["series"]["rows"]
    ]
    # the charts name the seven users of most cost and of most CPU; the rest are "(others)"
    assert {r["cost_user"] for r in series} == {f"u{i}" for i in range(3, 10)} | {"(others)"}
    assert {r["cpu_user"] for r in series} == {f"u{i}" for i in range(3, 10)} | {"(others)"}
    # the past days' sums are kept; today's are read again: a new row counts at once
    assert s.memo
    s.record(UsageEvent("u1", "small", "chat.completions", 200, 1000, 0, groups=",g1,", ts=NOW))
    dashboard_matches_the_rows(s, PRICES, NOW)
    # a look in the first minutes of a day reads the day before again too
    dashboard_matches_the_rows(s, PRICES, utc_day(NOW) + 60)
    s.close()


def test_the_background_warm_keeps_what_each_window_of_the_dashboard_sums(
    tmp_path: Path,
) -> None:
    s = UsageStore(f"sqlite:///{tmp_path / 'usage.sqlite'}")
    events = []
    for i in range(4):
        for ago in (0.1, 1, 3, 20):
            e = UsageEvent(f"u{i}", "small", "chat.completions", 200, 10 * i, 5, groups=",g0,")
            k = UsageEvent(f"u{i}", "kernel", "kernel", 200, cpu_seconds=i + 0.5, groups=",g0,")
            e.ts = k.ts = NOW - ago * 86400
            events += [e, k]
    s.record_many(events)
    warm_dashboard(s, PRICES, NOW)
    kept = dict(s.memo)
    assert kept
    # an operator's view of each window afterwards finds every past day kept (nothing new is
    # kept: only today is read) and the same answer as summing every row
    for days in (1, 7, 30):
        dashboard_columns(s, PRICES, NOW - days * 86400, NOW + 1, NOW)
        assert s.memo.keys() == kept.keys(), days
    dashboard_matches_the_rows(s, PRICES, NOW)
    # what was kept is what a cold view sums
    for days in (1, 7, 30):
        warm = dashboard_columns(s, PRICES, NOW - days * 86400, NOW + 1, NOW)
        s.memo.clear()
        cold = dashboard_columns(s, PRICES, NOW - days * 86400, NOW + 1, NOW)
        assert sorted(map(str, warm["rows"])) == sorted(map(str, cold["rows"]))
        assert warm["series"] == cold["series"]
        s.memo.update(kept)
    s.close()


def test_the_warm_runs_again_after_midnight_and_when_yesterday_is_final() -> None:
    midnight = utc_day(NOW) + 86400
    assert next_warm(NOW) == WARM_EVERY
    assert next_warm(midnight - 100) == 101  # a second after midnight
    # then a second after the day before is over
    assert next_warm(midnight + LATE_SECONDS - 100) == 101
    assert next_warm(midnight + LATE_SECONDS + 1) == WARM_EVERY
