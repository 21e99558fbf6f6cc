"""How a student's cohort policies combine (oraculo.policy), as the README states it."""

from __future__ import annotations

import datetime as dt

import pytest
from pydantic import ValidationError

from oraculo.kernels.limits import SandboxLimits
from oraculo.policy import POLICY_PROPERTY, CohortPolicy, ExamWindow, combine, tighten

NOW = dt.datetime(2026, 12, 1, 10, 30, tzinfo=dt.UTC)


def window(start: str, end: str, zone: str = "UTC") -> ExamWindow:
    return ExamWindow(
        start=dt.datetime.fromisoformat(start), end=dt.datetime.fromisoformat(end), timezone=zone
    )


def test_an_exam_in_any_cohort_pauses_ai_until_the_last_window_closes() -> None:
    # Lisbon is UTC in December; New York is UTC-5
    a = CohortPolicy(exam_windows=[window("2026-12-01T10:00", "2026-12-01T11:00", "Europe/Lisbon")])
    b = CohortPolicy(
        exam_windows=[window("2026-12-01T05:00", "2026-12-01T07:15", "America/New_York")]
    )
    c = CohortPolicy()
    eff = combine({"a": a, "b": b, "c": c}, NOW)
    assert eff.paused is not None and eff.paused.reason == "exam"
    assert eff.paused.cohort == "b"  # closes last: 12:15 UTC
    assert eff.paused.until == dt.datetime(2026, 12, 1, 12, 15, tzinfo=dt.UTC)
    msg = eff.refusal("chat").message("chat")  # type: ignore[union-attr]
    assert "cohort 'b'" in msg and "2026-12-01 07:15 America/New_York" in msg
    assert "(2026-12-01 12:15 UTC)" in msg and "Code cells still run" in msg
    # before and after its window the same cohort does not pause anything
    later = dt.datetime(2026, 12, 1, 12, 15, tzinfo=dt.UTC)
    assert combine({"a": a, "b": b}, later).paused is None


def test_ai_off_in_one_cohort_switches_ai_off() -> None:
    eff = combine({"x": CohortPolicy(), "y": CohortPolicy(ai=False)}, NOW)
    assert eff.paused is not None and (eff.paused.reason, eff.paused.cohort) == ("ai_off", "y")
    assert eff.refusal("voice") is eff.paused


def test_allowances_take_the_most_generous_cohort() -> None:
    a = CohortPolicy(
        models=["m1"],
        tokens_per_day=100,
        voice=False,
        agents=False,
        sandbox={"memory_mb": 1024, "processes": 32, "open_files": 0},
    )
    b = CohortPolicy(
        models=["m2"],
        tokens_per_day=500,
        voice=True,
        agents=False,
        sandbox={"memory_mb": 2048, "processes": 16, "open_files": 64},
    )
    eff = combine({"a": a, "b": b}, NOW)
    assert eff.models == {"m1", "m2"} and eff.allows_model("x", "m2") and not eff.allows_model("z")
    assert (eff.tokens_per_day, eff.tokens_cohort) == (500, "b")
    assert eff.voice and not eff.agents
    assert eff.refusal("agents") is not None and eff.refusal("voice") is None
    assert eff.sandbox == {"memory_mb": 2048, "processes": 32, "open_files": 0}
    # a cohort that names no models, or sets no token budget, allows them all
    eff = combine({"a": a, "c": CohortPolicy()}, NOW)
    assert eff.models is None and eff.tokens_per_day is None


def test_no_cohort_no_restriction() -> None:
    eff = combine({}, NOW)
    assert eff.paused is None and eff.models is None and eff.tokens_per_day is None
    assert eff.refusal("chat") is None and eff.to_json()["ai"]["available"] is True


def test_a_cohort_only_lowers_the_operators_limits() -> None:
    base = SandboxLimits(memory_mb=4096, cpu_seconds=0, processes=256, wall_clock_seconds=600)
    out = tighten(
        base, {"memory_mb": 99999, "cpu_seconds": 60, "processes": 0, "wall_clock_seconds": 120}
    )
    assert (out.memory_mb, out.cpu_seconds, out.processes, out.wall_clock_seconds) == (
        4096,
        60,
        256,
        120,
    )


def test_bad_policies_are_refused_and_a_bad_stored_one_means_ai_off() -> None:
    for bad in (
        {"ai": "maybe"},
        {"tokens_per_day": -1},
        {"sandbox": {"memory": 1}},
        {"exam_windows": [{"start": "2026-01-01T10:00", "end": "2026-01-01T09:00"}]},
        {
            "exam_windows": [
                {"start": "2026-01-01T10:00", "end": "2026-01-01T11:00", "timezone": "Mars/Olympus"}
            ]
        },
        {"unknown": 1},
    ):
        with pytest.raises(ValidationError):
            CohortPolicy.model_validate(bad)
    stored = CohortPolicy.from_properties({POLICY_PROPERTY: {"models": {"rpm": 20}}})
    assert stored is not None and stored.ai is False
    assert CohortPolicy.from_properties({"other": 1}) is None
