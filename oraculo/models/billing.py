"""Billing export: usage per user or per group over a period, as CSV or Parquet (polars).

``GET v1/usage/export?period=day|week|month`` (or ``since``/``until``) ``&by=user|group``
``&format=csv|parquet|json``, for operators (usage read-all). One row per user (or group) with
every unit and the weighted cost; a user in two groups counts towards both groups' rows.
"""

from __future__ import annotations

import io
from typing import Any

import polars as pl
import sqlalchemy as sa

from .metering import UsageStore
from .usage import Prices, _filters, _sums, _table, iso

#: The columns of an export, in order (``user`` or ``group`` first).
COLUMNS = [
    "period_start",
    "period_end",
    "requests",
    "prompt_tokens",
    "completion_tokens",
    "tokens",
    "cpu_seconds",
    "gpu_seconds",
    "voice_seconds",
    "cost",
]
FORMATS = {
    "csv": "text/csv; charset=utf-8",
    "parquet": "application/vnd.apache.parquet",
    "json": "application/json; charset=UTF-8",
}


def export_frame(
    store: UsageStore, prices: Prices, since: float, until: float, by: str
) -> pl.DataFrame:
    """Usage in ``[since, until)`` per user (``by="user"``) or per group, as a frame."""
    table = _table(since, until)
    keys = [table.c.user, table.c.groups]
    q = sa.select(*_sums(table, prices, *keys)).where(*_filters(table, None, None, since, until))
    with store.engine.connect() as conn:
        rows = [dict(r._mapping) for r in conn.execute(q.group_by(*keys))]
    schema = {
        "user": pl.String,
        "groups": pl.String,
        "requests": pl.Int64,
        "prompt_tokens": pl.Int64,
        "completion_tokens": pl.Int64,
        "cpu_seconds": pl.Float64,
        "gpu_seconds": pl.Float64,
        "voice_seconds": pl.Float64,
        "cost": pl.Float64,
    }
    df = pl.DataFrame(rows, schema=schema)
    if by == "group":
        df = (
            df.with_columns(pl.col("groups").fill_null("").str.strip_chars(",").str.split(","))
            .explode("groups")
            .filter(pl.col("groups") != "")
            .rename({"groups": "group"})
        )
    key = "group" if by == "group" else "user"
    units = [c for c in schema if c not in ("user", "groups")]
    out = (
        df.group_by(key)
        .agg(pl.col(*units).sum())
        .with_columns(
            (pl.col("prompt_tokens") + pl.col("completion_tokens")).alias("tokens"),
            pl.lit(iso(since)).alias("period_start"),
            pl.lit(iso(until)).alias("period_end"),
        )
        .sort(["cost", key], descending=[True, False])
    )
    return out.select(key, *COLUMNS)


def encode(df: pl.DataFrame, fmt: str) -> bytes | dict[str, Any]:
    if fmt == "csv":
        return df.write_csv().encode("utf-8")
    if fmt == "parquet":
        buf = io.BytesIO()
        df.write_parquet(buf)
        return buf.getvalue()
    return {"object": "usage.export", "columns": df.columns, "rows": df.rows()}
