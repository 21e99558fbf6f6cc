"""The operator's dashboard's tables and cards, as HTML for the board's panes.

Every value that came from a user (names, groups, kernel names) is escaped.
"""

from __future__ import annotations

import datetime as dt
import html
from collections.abc import Callable
from typing import Any

from .data import UNITS, ModelMetrics

UNIT_LABELS = {
    "tokens": "Model tokens",
    "cpu_seconds": "Kernel CPU seconds",
    "gpu_seconds": "Kernel GPU seconds",
    "voice_seconds": "Voice seconds",
    "cost": "Cost (weighted)",
}
PALETTE = ["#3b5bdb", "#e8590c", "#2f9e44", "#ae3ec9", "#1098ad", "#f08c00", "#c2255c", "#495057"]

CSS = """
:host{width:100%}
*{font-family:system-ui,-apple-system,'Segoe UI',sans-serif;color:#212529}
h1{font-size:20px;margin:0}
h2{font-size:15px;margin:4px 0 6px}
table{border-collapse:collapse;width:100%;font-size:13px}
th,td{text-align:left;padding:4px 8px;border-bottom:1px solid #e9ecef}
td.n,th.n{text-align:right;font-variant-numeric:tabular-nums}
.cards{display:flex;gap:12px;flex-wrap:wrap}
.card{flex:1;min-width:140px;background:#f8f9fa;border-radius:6px;padding:8px 12px}
.card b{display:block;font-size:22px}
.sub{font-size:12px;color:#616e7c;margin:6px 0 0}
.spent{color:#c92a2a;font-weight:600}.near{color:#e67700;font-weight:600}.ok{color:#2b8a3e}
.flash{padding:10px 16px;border-radius:6px}
.flash.good{background:#d3f9d8}.flash.bad{background:#ffe3e3}
.legend span{display:inline-block;margin-right:12px;font-size:12px}
.legend i{display:inline-block;width:10px;height:10px;margin-right:4px}
"""


USER_COLUMNS = [
    ("user", "User"),
    ("admin", "Admin"),
    ("groups", "Groups"),
    ("requests", "Requests"),
    *((u, UNIT_LABELS[u]) for u in UNITS),
]
GROUP_COLUMNS = [
    ("group", "Group"),
    ("members", "Members"),
    ("requests", "Requests"),
    ("tokens", "Tokens"),
    ("cpu_seconds", "CPU s"),
    ("voice_seconds", "Voice s"),
    ("cost", "Cost"),
]
SERVER_COLUMNS = [
    ("user", "User"),
    ("server", "Server"),
    ("state", "State"),
    ("started", "Started"),
    ("last_activity", "Last activity"),
    ("gpu", "GPU"),
    ("kernels", "Kernels (CPU in the last 15 min)"),
]
BUDGET_COLUMNS = [
    ("scope", "Scope"),
    ("name", "Budget of"),
    ("who", "Counted for"),
    ("period", "Period"),
    ("unit", "Unit"),
    ("used", "Used / limit"),
    ("state", "State"),
]
REFUSAL_COLUMNS = [("user", "User"), ("type", "Why"), ("count", "Refused"), ("last", "Last")]
MODEL_COLUMNS = [
    ("model", "Model"),
    ("queue", "Queue"),
    ("running", "In batch"),
    ("tokens", "Tokens since start"),
    ("tps", "Tokens/s (since last view)"),
    ("ttft", "Mean TTFT"),
]
MODEL_USE_COLUMNS = [("model", "Model"), *GROUP_COLUMNS[2:]]
REQUEST_COLUMNS = [("what", "Endpoint and status"), ("count", "Requests")]
GPU_COLUMNS = [
    ("gpu", "GPU"),
    ("name", "Name"),
    ("used", "Memory used (MiB)"),
    ("total", "Total (MiB)"),
    ("util", "Utilisation %"),
]


def e(value: Any) -> str:
    return html.escape(str(value), quote=True)


def num(v: float, unit: str = "") -> str:
    if unit == "cost":
        return f"{v:,.4f}"
    if unit.endswith("seconds"):
        return f"{v:,.1f}"
    return f"{v:,.0f}"


def table(
    rows: list[dict[str, Any]],
    columns: list[tuple[str, str]],
    testid: str,
    cell: Callable[[dict[str, Any], str], str] | None = None,
    empty: str = "Nothing yet.",
) -> str:
    head = "".join(
        f'<th class="{"n" if k in UNITS or k in ("requests", "count") else ""}">{e(t)}</th>'
        for k, t in columns
    )
    body = []
    for r in rows:
        tds = []
        for k, _ in columns:
            if cell is not None and (custom := cell(r, k)):
                tds.append(custom)
            elif k in UNITS:
                tds.append(f'<td class="n" data-col="{k}">{num(float(r.get(k) or 0), k)}</td>')
            elif k in ("requests", "count"):
                tds.append(f'<td class="n" data-col="{k}">{int(r.get(k) or 0):,}</td>')
            else:
                tds.append(f'<td data-col="{k}">{e(r.get(k) if r.get(k) is not None else "")}</td>')
        body.append(f"<tr>{''.join(tds)}</tr>")
    if not body:
        body.append(f'<tr><td colspan="{len(columns)}">{e(empty)}</td></tr>')
    return f'<table data-testid="{e(testid)}"><tr>{head}</tr>{"".join(body)}</table>'


def totals(totals: dict[str, float], since: str) -> str:
    cards = "".join(
        f'<div class="card" data-unit="{u}">{e(UNIT_LABELS[u])}<b>{num(totals[u], u)}</b></div>'
        for u in UNITS
    )
    return (
        f'<div data-testid="totals"><div class="cards">{cards}</div>'
        f'<p class="sub">Since {e(since)}</p></div>'
    )


def servers(rows: list[dict[str, Any]], gpus: dict[str, dict[str, Any]]) -> str:
    """Every server with its state, GPU (and its memory) and kernels."""

    def cell(r: dict[str, Any], k: str) -> str:
        if k == "state":
            state = "ready" if r["ready"] else (r["pending"] or "stopped")
            return f'<td data-col="state">{e(state)}</td>'
        if k == "gpu":
            gpu = r["gpu"]
            if gpu is None:
                return '<td data-col="gpu">CPU</td>'
            mem = gpus.get(str(gpu))
            extra = f" ({mem['used']}/{mem['total']} MiB)" if mem else ""
            return f'<td data-col="gpu">GPU {e(gpu)}{e(extra)}</td>'
        if k == "kernels":
            return f'<td data-col="kernels">{kernels(r)}</td>'
        return ""

    return table(rows, SERVER_COLUMNS, "servers", cell, "No server is running.")


def kernels(server: dict[str, Any]) -> str:
    """A server's kernels: name, id, and its last CPU report of the last 15 minutes."""
    items = []
    for x in server["kernels"]:
        if x.get("cpu_seconds") is None:
            report = "no CPU report in 15 min"
        else:
            last = str(x.get("last") or "")[11:19]
            report = f"{x['cpu_seconds']:.1f} CPU s, last report {last} UTC"
        state = "running" if "gone" not in x else "not running" if x["gone"] else "reported"
        items.append(
            f'<div data-kernel="{e(x["kernel_id"])}">{e(x["kernel_name"])} '
            f"{e(str(x['kernel_id'])[:8])} ({state}; {e(report)})</div>"
        )
    return "".join(items) or "no kernel running"


def budgets(rows: list[dict[str, Any]]) -> str:
    def cell(r: dict[str, Any], k: str) -> str:
        if k == "used":
            return f'<td class="n">{num(r["used"], r["unit"])} / {num(r["limit"], r["unit"])}</td>'
        if k == "state":
            return f'<td class="{r["state"]}" data-col="state">{r["state"]} ({r["share"]:.0%})</td>'
        return ""

    return table(rows, BUDGET_COLUMNS, "budgets", cell, "No budgets.")


def model_service(metrics: ModelMetrics, throughput: dict[str, float]) -> str:
    """Queue, batch, tokens and their rate, time to first token per model; requests by status."""
    model_rows = [
        {
            "model": m,
            "queue": metrics.queue.get(m, 0),
            "running": metrics.running.get(m, 0),
            "tokens": metrics.tokens.get(m, 0),
            "tps": f"{throughput[m]:.1f}" if m in throughput else "—",
            "ttft": f"{metrics.ttft_mean[m] * 1000:.0f} ms" if m in metrics.ttft_mean else "—",
        }
        for m in sorted(set(metrics.queue) | set(metrics.tokens))
    ]
    request_rows = [
        {"what": k, "count": v} for k, v in sorted(metrics.requests.items(), key=lambda kv: -kv[1])
    ]
    return table(model_rows, MODEL_COLUMNS, "model-service") + table(
        request_rows[:12], REQUEST_COLUMNS, "requests"
    )


def gpus(gpus: dict[str, dict[str, Any]]) -> str:
    rows = [{"gpu": k, **v} for k, v in sorted(gpus.items())]
    no_gpu = "No GPU on this machine: servers and models run on CPU."
    return table(rows, GPU_COLUMNS, "gpus", empty=no_gpu)


def utc(ts: float) -> str:
    return dt.datetime.fromtimestamp(ts, dt.UTC).strftime("%Y-%m-%d %H:%M UTC")
