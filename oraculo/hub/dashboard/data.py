"""What the operator's dashboard shows, read with the viewer's own credential.

Everything is fetched with the hub OAuth token of the person looking (never a token of the
dashboard's own), so the hub and the model service decide what they may see and do: users,
groups and servers (with the GPU each server was given) from the hub's REST API; usage per day,
budgets, refusals and the service's Prometheus metrics from the model service. polars does the
aggregation: per user, group, model and day, top spenders, and who is near a budget.
"""

from __future__ import annotations

import asyncio
import calendar
import dataclasses
import shutil
import subprocess
import time
from typing import Any

import httpx
import polars as pl
from prometheus_client.parser import text_string_to_metric_families

UNITS = ("tokens", "cpu_seconds", "gpu_seconds", "voice_seconds", "cost")
PERIODS = {"day": 1, "week": 7, "month": 30}
#: A budget counts as "near" from this share of its limit.
NEAR = 0.8


class UpstreamError(RuntimeError):
    """The hub or the model service refused or failed a request the dashboard made."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status


def _message(r: httpx.Response) -> str:
    try:
        body = r.json()
    except ValueError:
        return r.reason_phrase
    if isinstance(body, dict):
        err = body.get("error")
        if isinstance(err, dict):
            return str(err.get("message", r.reason_phrase))
        return str(body.get("message", r.reason_phrase))
    return r.reason_phrase


@dataclasses.dataclass
class Upstreams:
    """Where the hub's API and the model service answer, and the viewer's token for both."""

    hub_api: str  # ends in /
    models: str  # ends in /
    token: str
    timeout: float = 30.0

    def _client(self) -> httpx.AsyncClient:
        return httpx.AsyncClient(
            headers={"Authorization": f"token {self.token}"}, timeout=self.timeout
        )

    async def _json(self, c: httpx.AsyncClient, url: str, **kw: Any) -> Any:
        r = await c.get(url, **kw)
        if r.status_code >= 400:
            raise UpstreamError(r.status_code, _message(r))
        return r.json()

    async def stop_server(self, user: str) -> None:
        async with self._client() as c:
            r = await c.delete(f"{self.hub_api}users/{user}/server")
        if r.status_code not in (202, 204):
            raise UpstreamError(r.status_code, _message(r))

    async def put_budget(self, budget: dict[str, Any]) -> None:
        async with self._client() as c:
            r = await c.put(f"{self.models}v1/budgets", json=budget)
        if r.status_code != 200:
            raise UpstreamError(r.status_code, _message(r))

    async def delete_budget(self, key: dict[str, str]) -> None:
        async with self._client() as c:
            r = await c.delete(f"{self.models}v1/budgets", params=key)
        if r.status_code != 204:
            raise UpstreamError(r.status_code, _message(r))

    async def gather(self, period: str, now: float | None = None) -> Raw:
        """Everything one page shows, fetched concurrently."""
        now = now or time.time()
        since = now - PERIODS[period] * 86400
        async with self._client() as c:
            users, groups, daily, budgets, metrics = await asyncio.gather(
                self._json(c, f"{self.hub_api}users", params={"state": "", "limit": 1000}),
                self._json(c, f"{self.hub_api}groups", params={"limit": 1000}),
                self._json(
                    c, f"{self.models}v1/usage/daily", params={"since": since, "until": now + 1}
                ),
                self._json(c, f"{self.models}v1/budgets"),
                self._text(c, f"{self.models}metrics"),
            )
        return Raw(users, groups, daily, budgets["data"], metrics, period, now)

    async def _text(self, c: httpx.AsyncClient, url: str) -> str:
        r = await c.get(url)
        if r.status_code >= 400:
            raise UpstreamError(r.status_code, _message(r))
        return r.text


@dataclasses.dataclass
class Raw:
    users: list[dict[str, Any]]
    groups: list[dict[str, Any]]
    daily: dict[str, Any]
    budgets: list[dict[str, Any]]
    metrics: str
    period: str
    now: float


# --- aggregation (polars) -----------------------------------------------------------------------

_DAILY_SCHEMA = {
    "day": pl.Float64,
    "user": pl.String,
    "groups": pl.String,
    "model": pl.String,
    "requests": pl.Int64,
    "prompt_tokens": pl.Int64,
    "completion_tokens": pl.Int64,
    "cpu_seconds": pl.Float64,
    "gpu_seconds": pl.Float64,
    "voice_seconds": pl.Float64,
    "cost": pl.Float64,
}


def daily_frame(daily: dict[str, Any]) -> pl.DataFrame:
    """The model service's per-day rows as a frame, with ``tokens`` and a ``date``."""
    columns = daily.get("columns") or list(_DAILY_SCHEMA)
    df = pl.DataFrame(
        daily.get("rows") or [],
        schema={c: _DAILY_SCHEMA.get(c, pl.String) for c in columns},
        orient="row",
    )
    return df.with_columns(
        (pl.col("prompt_tokens") + pl.col("completion_tokens")).alias("tokens"),
        pl.from_epoch(pl.col("day").cast(pl.Int64), time_unit="s").dt.date().alias("date"),
    )


_SERIES_SCHEMA = {
    "day": pl.Float64,
    "model": pl.String,
    "groups": pl.String,
    "cost_user": pl.String,
    "cpu_user": pl.String,
    "tokens": pl.Int64,
    "cost": pl.Float64,
    "cpu_seconds": pl.Float64,
    "voice_seconds": pl.Float64,
}


def series_frame(daily: dict[str, Any]) -> pl.DataFrame:
    """The charts' per-day sums (``series`` of ``v1/usage/daily``) as a frame with a ``date``."""
    series = daily.get("series") or {}
    columns = series.get("columns") or list(_SERIES_SCHEMA)
    df = pl.DataFrame(
        series.get("rows") or [],
        schema={c: _SERIES_SCHEMA.get(c, pl.String) for c in columns},
        orient="row",
    )
    return df.with_columns(
        pl.from_epoch(pl.col("day").cast(pl.Int64), time_unit="s").dt.date().alias("date")
    )


@dataclasses.dataclass
class Shaped:
    """The page's numbers: totals, the tables per user, group and model, the charts' frames
    (date by key), and each budget's state."""

    totals: dict[str, float]
    users: list[dict[str, Any]]
    groups: list[dict[str, Any]]
    models: list[dict[str, Any]]
    charts: dict[str, tuple[pl.DataFrame, str]]
    budgets: list[dict[str, Any]]


def shape(
    daily: dict[str, Any], since: float, now: float, budgets: list[dict[str, Any]] | None = None
) -> Shaped:
    """polars over the model service's sums (small: per user, groups, model and span, and
    per day for the charts) into what the page shows."""
    df = daily_frame(daily)
    series = series_frame(daily)
    days = pl.date_range(
        pl.from_epoch(pl.lit(int(since)), time_unit="s").dt.date(),
        pl.from_epoch(pl.lit(int(now)), time_unit="s").dt.date(),
        eager=True,
    ).to_list()
    window = df.filter(pl.col("day") >= since - since % 86400)
    voice = series.filter(pl.col("voice_seconds") > 0).with_columns(
        pl.when(pl.col("groups").str.strip_chars(",") == "")
        .then(pl.lit(",(no group),"))
        .otherwise(pl.col("groups"))
        .alias("groups")
    )
    charts = {
        "tokens_by_model": (
            over_time(series.filter(pl.col("tokens") > 0), "tokens", "model", days),
            "tokens",
        ),
        "cost_by_user": (
            over_time(series.rename({"cost_user": "user"}), "cost", "user", days),
            "cost",
        ),
        "cpu_by_user": (
            over_time(
                series.filter(pl.col("cpu_seconds") > 0).rename({"cpu_user": "user"}),
                "cpu_seconds",
                "user",
                days,
            ),
            "cpu_seconds",
        ),
        "voice_by_group": (
            over_time(by_group_rows(voice), "voice_seconds", "group", days),
            "voice_seconds",
        ),
    }
    return Shaped(
        totals={u: float(window[u].sum() or 0) for u in UNITS},
        users=by(window, "user").to_dicts(),
        groups=by(window, "group").to_dicts(),
        models=by(window, "model").to_dicts(),
        charts=charts,
        budgets=budget_status(df, budgets or [], now),
    )


def by_group_rows(df: pl.DataFrame) -> pl.DataFrame:
    """One row per group a row counts for (a member of two groups counts in both)."""
    return (
        df.with_columns(pl.col("groups").str.strip_chars(",").str.split(",").alias("group"))
        .explode("group")
        .filter(pl.col("group") != "")
    )


def by(df: pl.DataFrame, key: str) -> pl.DataFrame:
    """Every unit summed per ``key`` (``user``, ``model`` or ``group``), most cost first."""
    if key == "group":
        df = (
            df.with_columns(pl.col("groups").str.strip_chars(",").str.split(",").alias("group"))
            .explode("group")
            .filter(pl.col("group").is_not_null() & (pl.col("group") != ""))
        )
    return (
        df.group_by(key)
        .agg(pl.col("requests", *UNITS).sum())
        .sort(["cost", "tokens", key], descending=[True, True, False])
    )


def over_time(df: pl.DataFrame, unit: str, key: str, days: list[Any]) -> pl.DataFrame:
    """``unit`` per day (rows) and ``key`` (columns), every day of the window present."""
    if df.is_empty():
        return pl.DataFrame({"date": days})
    wide = df.group_by("date", key).agg(pl.col(unit).sum()).pivot(on=key, index="date")
    return pl.DataFrame({"date": days}).join(wide, on="date", how="left").fill_null(0)


def budget_status(
    df: pl.DataFrame, budgets: list[dict[str, Any]], now: float
) -> list[dict[str, Any]]:
    """Each budget with what its user or group used in its current period, and whether it is
    spent or near (a ``*`` budget: every user with use, each against it)."""
    today = now - now % 86400
    first = time.gmtime(now)
    month = float(calendar.timegm((first.tm_year, first.tm_mon, 1, 0, 0, 0)))
    out = []
    for b in budgets:
        start = today if b["period"] == "day" else month
        window = df.filter(pl.col("day") >= start)
        if b["scope"] == "group":
            window = window.filter(pl.col("groups").str.contains(f",{b['name']},", literal=True))
            pairs = [(b["name"], float(window[b["unit"]].sum() or 0))]
        elif b["name"] == "*":
            per = window.group_by("user").agg(pl.col(b["unit"]).sum())
            pairs = [(str(u), float(v)) for u, v in per.iter_rows()]
        else:
            mine = window.filter(pl.col("user") == b["name"])
            pairs = [(b["name"], float(mine[b["unit"]].sum() or 0))]
        for who, used in pairs:
            share = used / b["limit"] if b["limit"] else (1.0 if used > 0 else 0.0)
            state = "spent" if used >= b["limit"] else "near" if share >= NEAR else "ok"
            out.append({**b, "who": who, "used": used, "share": share, "state": state})
    return sorted(out, key=lambda r: (-r["share"], r["scope"], r["who"]))


def servers(raw: Raw) -> list[dict[str, Any]]:
    """Every server (running or starting) with its GPU and its kernels: every kernel the server
    last reported running (idle ones too), each with its last CPU report of the last 15
    minutes, then kernels that reported compute but are not (or no longer) in that list."""
    reports: dict[str, list[dict[str, Any]]] = {}
    for k in raw.daily.get("kernels") or []:
        reports.setdefault(k["user"], []).append(k)
    running = raw.daily.get("running") or {}
    out = []
    for u in raw.users:
        mine = {k["kernel_id"]: k for k in reports.get(u["name"], [])}
        for name, s in (u.get("servers") or {}).items():
            state = s.get("state") or {}
            listed = (running.get(u["name"]) or {}).get(name) or {}
            kernels = []
            for k in listed.get("kernels") or []:
                report = mine.pop(k["kernel_id"], None)
                kernels.append(
                    {
                        **k,
                        "cpu_seconds": report["cpu_seconds"] if report else None,
                        "last": report["last"] if report else None,
                    }
                )
            if name == "":  # reports name no server: the rest count with the default one
                # (not in a list the server sent: stopped since; no list yet: unknown)
                kernels += [{**k, "gone": bool(listed)} for k in mine.values()]
            out.append(
                {
                    "user": u["name"],
                    "server": name or "(default)",
                    "ready": bool(s.get("ready")),
                    "pending": s.get("pending"),
                    "started": s.get("started"),
                    "last_activity": s.get("last_activity"),
                    "gpu": state.get("gpu_id"),
                    "kernels": kernels,
                    "kernels_listed_at": listed.get("at"),
                }
            )
    return out


@dataclasses.dataclass
class ModelMetrics:
    queue: dict[str, float]
    running: dict[str, float]
    tokens: dict[str, float]
    requests: dict[str, float]
    ttft_mean: dict[str, float]


def parse_metrics(text: str) -> ModelMetrics:
    """Queue depth, batch size, tokens and requests by model from the Prometheus text."""
    m = ModelMetrics({}, {}, {}, {}, {})
    ttft_sum: dict[str, float] = {}
    ttft_count: dict[str, float] = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            model = s.labels.get("model", "-")
            if s.name == "oraculo_models_queue_depth":
                m.queue[model] = s.value
            elif s.name == "oraculo_models_running":
                m.running[model] = s.value
            elif s.name == "oraculo_models_tokens_total":
                m.tokens[model] = m.tokens.get(model, 0.0) + s.value
            elif s.name == "oraculo_models_requests_total":
                status = s.labels.get("status", "")
                key = f"{s.labels.get('endpoint', '-')} {status}"
                m.requests[key] = m.requests.get(key, 0.0) + s.value
            elif s.name == "oraculo_models_time_to_first_token_seconds_sum":
                ttft_sum[model] = s.value
            elif s.name == "oraculo_models_time_to_first_token_seconds_count":
                ttft_count[model] = s.value
    for model, n in ttft_count.items():
        if n:
            m.ttft_mean[model] = ttft_sum.get(model, 0.0) / n
    return m


class Throughput:
    """Tokens per second per model between two looks at the counters (the dashboard's own
    memory: the service exports totals, a rate needs two samples)."""

    def __init__(self) -> None:
        self._last: tuple[float, dict[str, float]] | None = None

    def update(self, tokens: dict[str, float], now: float) -> dict[str, float]:
        last, self._last = self._last, (now, dict(tokens))
        if last is None or now <= last[0]:
            return {}
        dt = now - last[0]
        return {k: max(0.0, (v - last[1].get(k, 0.0)) / dt) for k, v in tokens.items()}


def gpu_memory() -> dict[str, dict[str, Any]]:
    """Each GPU's name and memory (MiB) from ``nvidia-smi``; empty without GPUs (blocking:
    call it in a thread)."""
    exe = shutil.which("nvidia-smi")
    if exe is None:
        return {}
    try:
        out = subprocess.run(
            [
                exe,
                "--query-gpu=index,name,memory.used,memory.total,utilization.gpu",
                "--format=csv,noheader,nounits",
            ],
            capture_output=True,
            text=True,
            timeout=10,
            check=True,
        ).stdout
    except (OSError, subprocess.SubprocessError):
        return {}
    gpus = {}
    for line in out.splitlines():
        parts = [p.strip() for p in line.split(",")]
        if len(parts) == 5:
            index, name, used, total, util = parts
            gpus[index] = {"name": name, "used": used, "total": total, "util": util}
    return gpus
