"""Ranking the audit records of executions: pairing, the period, the wall-time fallback."""

from __future__ import annotations

import datetime as dt

from oraculo.extensions.usage.executions import first_line, period_start, top_executions


def _pair(eid: str, when: str, cpu: float | None, wall: float, code: str) -> list[dict]:
    started = {
        "event": "started",
        "time": when,
        "execution_id": eid,
        "origin": "api",
        "code": code,
        "session": "k1",
    }
    finished = {
        "event": "finished",
        "time": when,
        "execution_id": eid,
        "origin": "api",
        "status": "ok",
        "duration_seconds": wall,
        "session": "k1",
    }
    if cpu is not None:
        finished.update(cpu_seconds=cpu, cpu_source="kernel")
    return [started, finished]


def test_ranked_by_cpu_within_the_period_with_the_wall_time_where_cpu_is_unknown() -> None:
    now = dt.datetime(2026, 12, 3, 12, tzinfo=dt.UTC)  # a Thursday
    records = (
        _pair("old", "2026-11-29T10:00:00+00:00", 99.0, 99.0, "last week")
        + _pair("a", "2026-12-01T10:00:00+00:00", 0.5, 4.0, "\n\n  sleep_a_lot()\nmore")
        + _pair("b", "2026-12-02T10:00:00+00:00", 2.0, 2.1, "burn()")
        + _pair("c", "2026-12-03T10:00:00+00:00", None, 1.0, "before cpu was measured")
        + [{"event": "started", "time": "2026-12-03T11:00:00+00:00", "execution_id": "running"}]
    )
    top = top_executions(records, period_start("week", now))
    assert [e["execution_id"] for e in top] == ["b", "c", "a"]
    assert top[1]["cpu_source"] == "wall" and top[1]["cpu_seconds"] == 1.0
    assert top[2]["code_first_line"] == "  sleep_a_lot()"
    assert [e["execution_id"] for e in top_executions(records, period_start("day", now))] == ["c"]
    assert len(top_executions(records, period_start("month", now), limit=2)) == 2


def test_first_line_is_cut() -> None:
    assert first_line("x" * 200).endswith("…") and len(first_line("x" * 200)) == 120
    assert first_line("") == ""
