"""The operator's dashboard's aggregation without a hub: who is near a budget in its current
period, and the model service's metrics read from their Prometheus text."""

from __future__ import annotations

import calendar

from prometheus_client import CollectorRegistry, Counter, Gauge, generate_latest

from oraculo.hub.dashboard.data import (
    Raw,
    Throughput,
    budget_status,
    by,
    daily_frame,
    parse_metrics,
    servers,
)

COLUMNS = [
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
]


def day(d: int, month: int = 12) -> float:
    return float(calendar.timegm((2026, month, d, 0, 0, 0)))


def test_budgets_count_their_own_period_and_who_is_near() -> None:
    now = day(15) + 36000
    df = daily_frame(
        {
            "columns": COLUMNS,
            "rows": [
                [day(1), "a", ",g,", "m", 1, 10, 0, 0.0, 0.0, 0.0, 0.0],
                [day(30, 11), "a", ",g,", "m", 1, 99, 0, 0.0, 0.0, 0.0, 0.0],  # last month
                [day(15), "b", ",g,h,", "m", 1, 5, 0, 2.0, 0.0, 0.0, 0.0],
            ],
        }
    )
    budgets = [
        {"scope": "user", "name": "a", "period": "month", "unit": "tokens", "limit": 12},
        {"scope": "group", "name": "g", "period": "day", "unit": "tokens", "limit": 100},
        {"scope": "user", "name": "*", "period": "day", "unit": "tokens", "limit": 5},
    ]
    got = {(r["name"], r["who"]): (r["used"], r["state"]) for r in budget_status(df, budgets, now)}
    assert got == {
        ("a", "a"): (10.0, "near"),  # 83 % of this month's; November's 99 do not count
        ("g", "g"): (5.0, "ok"),  # today only
        ("*", "b"): (5.0, "spent"),  # every user with use today, each against "*"
    }
    groups = by(df, "group").to_dicts()
    assert [(r["group"], r["tokens"]) for r in groups] == [("g", 114), ("h", 5)]


def test_metrics_give_queue_tokens_and_a_rate_between_two_looks() -> None:
    registry = CollectorRegistry()
    tokens = Counter("oraculo_models_tokens", "t", ["model", "kind"], registry=registry)
    queue = Gauge("oraculo_models_queue_depth", "q", ["model"], registry=registry)
    tokens.labels("m", "prompt").inc(100)
    tokens.labels("m", "completion").inc(50)
    queue.labels("m").set(3)
    first = parse_metrics(generate_latest(registry).decode())
    assert first.tokens == {"m": 150.0} and first.queue == {"m": 3.0}
    rate = Throughput()
    assert rate.update(first.tokens, 1000.0) == {}
    tokens.labels("m", "completion").inc(30)
    second = parse_metrics(generate_latest(registry).decode())
    assert rate.update(second.tokens, 1010.0) == {"m": 3.0}


def test_servers_list_every_running_kernel_with_its_last_cpu_report() -> None:
    """Every kernel a server last reported running, idle ones too, with its CPU report of the
    last 15 minutes if any; a kernel that reported but is no longer listed is kept, marked."""
    users = [
        {"name": "a", "servers": {"": {"ready": True, "state": {}}}},
        {"name": "b", "servers": {"": {"ready": True, "state": {"gpu_id": 0}}}},
    ]
    report = {"kernel_name": "oraculo", "gpu_seconds": 0.0}
    daily = {
        "kernels": [
            {**report, "user": "a", "kernel_id": "k1", "cpu_seconds": 2.5, "last": "t1"},
            {**report, "user": "a", "kernel_id": "old", "cpu_seconds": 1.0, "last": "t0"},
            {**report, "user": "b", "kernel_id": "kb", "cpu_seconds": 3.0, "last": "t2"},
        ],
        "running": {
            "a": {
                "": {
                    "at": "t3",
                    "kernels": [
                        {"kernel_id": "k1", "kernel_name": "oraculo"},
                        {"kernel_id": "k2", "kernel_name": "oraculo"},
                    ],
                }
            }
        },
    }
    a, b = servers(Raw(users, [], daily, [], "", "day", 0.0))
    got = {k["kernel_id"]: (k["cpu_seconds"], k.get("gone")) for k in a["kernels"]}
    assert got == {"k1": (2.5, None), "k2": (None, None), "old": (1.0, True)}
    # b's server sent no list (yet): what reported is shown, not called stopped
    assert [(k["kernel_id"], k["gone"]) for k in b["kernels"]] == [("kb", False)]
    assert b["gpu"] == 0
