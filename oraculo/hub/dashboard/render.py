"""The operator's dashboard as one HTML page: tables, forms and SVG charts drawn here.

No script and no asset from anywhere: the charts are inline SVG, the styles inline CSS, so the
page works offline and under a strict Content-Security-Policy. Every value that came from a
user (names, groups, kernel names) is escaped.
"""

from __future__ import annotations

import datetime as dt
import html
from collections.abc import Callable
from typing import Any

import polars as pl

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
body{font-family:system-ui,-apple-system,'Segoe UI',sans-serif;margin:0;background:#f5f6f8;
color:#212529}
header{background:#1f2937;color:#fff;padding:12px 24px;display:flex;align-items:center;gap:24px}
header h1{font-size:20px;margin:0}header a{color:#cfe0ff}
main{padding:16px 24px;display:grid;grid-template-columns:repeat(auto-fit,minmax(520px,1fr));
gap:16px}
section{background:#fff;border-radius:8px;padding:12px 16px;box-shadow:0 1px 2px #0002}
section.wide{grid-column:1/-1}
h2{font-size:16px;margin:4px 0 10px}
table{border-collapse:collapse;width:100%;font-size:13px}
th,td{text-align:left;padding:4px 8px;border-bottom:1px solid #e9ecef}
td.n,th.n{text-align:right;font-variant-numeric:tabular-nums}
.cards{display:flex;gap:12px;flex-wrap:wrap}
.card{flex:1;min-width:140px;background:#f8f9fa;border-radius:6px;padding:8px 12px}
.card b{display:block;font-size:22px}
.spent{color:#c92a2a;font-weight:600}.near{color:#e67700;font-weight:600}.ok{color:#2b8a3e}
.flash{grid-column:1/-1;padding:10px 16px;border-radius:6px}
.flash.good{background:#d3f9d8}.flash.bad{background:#ffe3e3}
form.inline{display:inline}
button{cursor:pointer}
.periods a{margin-right:10px}.periods a.on{font-weight:700;text-decoration:none;color:#fff}
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
    ("kernels", "Kernels (busy in the last 15 min)"),
    ("action", ""),
]
BUDGET_COLUMNS = [
    ("scope", "Scope"),
    ("name", "Budget of"),
    ("who", "Counted for"),
    ("period", "Period"),
    ("unit", "Unit"),
    ("used", "Used / limit"),
    ("state", "State"),
    ("action", ""),
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


def stacked_bars(wide: pl.DataFrame, unit: str, testid: str) -> str:
    """An SVG bar chart: one bar per day, stacked by the other columns."""
    keys = [c for c in wide.columns if c != "date"]
    width, height, left, bottom = 560, 200, 56, 24
    n = max(1, wide.height)
    totals = [sum(float(r[k]) for k in keys) for r in wide.iter_rows(named=True)] or [0.0]
    top = max(totals) or 1.0
    bar = (width - left) / n
    parts = [
        f'<div class="chart" data-testid="{e(testid)}" data-unit="{e(unit)}">'
        f'<svg viewBox="0 0 {width} {height}" '
        f'width="100%" role="img" aria-label="{e(UNIT_LABELS[unit])} per day">',
        f'<line x1="{left}" y1="{height - bottom}" x2="{width}" y2="{height - bottom}" '
        'stroke="#adb5bd"/>',
        f'<text x="{left - 4}" y="12" font-size="10" text-anchor="end">{num(top, unit)}</text>',
        f'<text x="{left - 4}" y="{height - bottom}" font-size="10" text-anchor="end">0</text>',
    ]
    plot = height - bottom - 16
    for i, row in enumerate(wide.iter_rows(named=True)):
        x = left + i * bar + bar * 0.1
        y = float(height - bottom)
        for j, k in enumerate(keys):
            v = float(row[k])
            if v <= 0:
                continue
            h = plot * v / top
            y -= h
            parts.append(
                f'<rect x="{x:.1f}" y="{y:.1f}" width="{bar * 0.8:.1f}" height="{h:.1f}" '
                f'fill="{PALETTE[j % len(PALETTE)]}"><title>{e(k)}: {num(v, unit)}</title></rect>'
            )
        if n <= 10 or i % max(1, n // 8) == 0:
            label = row["date"].strftime("%m-%d") if row["date"] else ""
            parts.append(
                f'<text x="{x + bar * 0.4:.1f}" y="{height - 8}" font-size="10" '
                f'text-anchor="middle">{e(label)}</text>'
            )
    parts.append("</svg>")
    legend = "".join(
        f'<span><i style="background:{PALETTE[j % len(PALETTE)]}"></i>{e(k)}</span>'
        for j, k in enumerate(keys)
    )
    return "".join(parts) + f'<div class="legend">{legend}</div></div>'


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


def page(
    *,
    viewer: str,
    base: str,
    period: str,
    xsrf: str,
    flash: tuple[str, str] | None,
    totals: dict[str, float],
    charts: dict[str, str],
    users: list[dict[str, Any]],
    groups: list[dict[str, Any]],
    models: list[dict[str, Any]],
    servers: list[dict[str, Any]],
    budgets: list[dict[str, Any]],
    refusals: list[dict[str, Any]],
    metrics: ModelMetrics,
    throughput: dict[str, float],
    gpus: dict[str, dict[str, Any]],
    since: str,
) -> str:
    periods = " ".join(
        f'<a class="{"on" if p == period else ""}" href="{e(base)}?period={p}">{label}</a>'
        for p, label in (("day", "Today"), ("week", "7 days"), ("month", "30 days"))
    )
    cards = "".join(
        f'<div class="card" data-unit="{u}">{e(UNIT_LABELS[u])}<b>{num(totals[u], u)}</b></div>'
        for u in UNITS
    )
    flash_html = ""
    if flash:
        kind, text = flash
        flash_html = f'<div class="flash {e(kind)}" data-testid="flash">{e(text)}</div>'

    def server_cell(r: dict[str, Any], k: str) -> str:
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
            ks = r["kernels"]
            if not ks:
                return '<td data-col="kernels">none busy</td>'
            items = ", ".join(
                f"{e(x['kernel_name'])} {e(str(x['kernel_id'])[:8])} ({x['cpu_seconds']:.1f} CPU s)"
                for x in ks
            )
            return f'<td data-col="kernels">{items}</td>'
        if k == "action":
            return (
                f'<td><form class="inline" method="post" action="{e(base)}servers/stop">{xsrf}'
                f'<input type="hidden" name="user" value="{e(r["user"])}">'
                f'<button type="submit" data-testid="stop-{e(r["user"])}">Stop</button>'
                "</form></td>"
            )
        return ""

    def budget_cell(r: dict[str, Any], k: str) -> str:
        if k == "used":
            return f'<td class="n">{num(r["used"], r["unit"])} / {num(r["limit"], r["unit"])}</td>'
        if k == "state":
            return f'<td class="{r["state"]}" data-col="state">{r["state"]} ({r["share"]:.0%})</td>'
        if k == "action":
            return (
                f'<td><form class="inline" method="post" action="{e(base)}budgets/delete">{xsrf}'
                + "".join(
                    f'<input type="hidden" name="{f}" value="{e(r[f])}">'
                    for f in ("scope", "name", "period", "unit")
                )
                + "<button>Remove</button></form></td>"
            )
        return ""

    budget_form = f"""
<form method="post" action="{e(base)}budgets" data-testid="budget-form">{xsrf}
<select name="scope"><option>user</option><option>group</option></select>
<input name="name" placeholder="name or *" required size="10">
<select name="period"><option>day</option><option>month</option></select>
<select name="unit">{"".join(f"<option>{u}</option>" for u in UNITS)}</select>
<input name="limit" type="number" step="any" min="0" placeholder="limit" required size="8">
<button type="submit">Set budget</button></form>"""

    gpu_rows = [{"gpu": k, **v} for k, v in sorted(gpus.items())]
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
    no_gpu = "No GPU on this machine: servers and models run on CPU."
    t = {
        "users": table(users, USER_COLUMNS, "top-spenders"),
        "groups": table(groups, GROUP_COLUMNS, "groups"),
        "models": table(models, [("model", "Model"), *GROUP_COLUMNS[2:]], "models"),
        "servers": table(servers, SERVER_COLUMNS, "servers", server_cell, "No server is running."),
        "budgets": table(budgets, BUDGET_COLUMNS, "budgets", budget_cell, "No budgets."),
        "refusals": table(refusals, REFUSAL_COLUMNS, "refusals", empty="No refusals."),
        "model_service": table(model_rows, MODEL_COLUMNS, "model-service"),
        "requests": table(request_rows[:12], REQUEST_COLUMNS, "requests"),
        "gpus": table(gpu_rows, GPU_COLUMNS, "gpus", empty=no_gpu),
    }
    return f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>Oráculo — operator's dashboard</title>
<meta name="viewport" content="width=device-width, initial-scale=1"><style>{CSS}</style></head>
<body data-testid="operator-dashboard" data-period="{e(period)}">
<header><h1>Oráculo — operator's dashboard</h1><span class="periods">{periods}</span>
<span>since {e(since)}</span><span style="margin-left:auto">{e(viewer)} ·
<a href="/hub/home">Hub</a> · <a href="/hub/admin">Hub admin</a></span></header>
<main>
{flash_html}
<section class="wide" data-testid="totals"><h2>Everyone, this period</h2>
<div class="cards">{cards}</div></section>
<section><h2>Model tokens per day, by model</h2>{charts["tokens_by_model"]}</section>
<section><h2>Cost per day, by user</h2>{charts["cost_by_user"]}</section>
<section><h2>Kernel CPU seconds per day, by user</h2>{charts["cpu_by_user"]}</section>
<section><h2>Voice seconds per day, by group</h2>{charts["voice_by_group"]}</section>
<section class="wide"><h2>Users, top spenders first</h2>{t["users"]}</section>
<section><h2>Groups</h2>{t["groups"]}</section>
<section><h2>Models</h2>{t["models"]}</section>
<section class="wide"><h2>Servers</h2>{t["servers"]}</section>
<section class="wide"><h2>Budgets, and who is near them</h2>{t["budgets"]}{budget_form}</section>
<section><h2>Refused requests (rate limits, quotas, budgets)</h2>{t["refusals"]}</section>
<section><h2>Model service</h2>{t["model_service"]}{t["requests"]}</section>
<section><h2>GPUs</h2>{t["gpus"]}</section>
</main></body></html>"""


def forbidden(viewer: str, why: str) -> str:
    return f"""<!doctype html><html lang="en"><head><meta charset="utf-8">
<title>Not allowed</title><style>{CSS}</style></head>
<body data-testid="dashboard-forbidden"><header><h1>Oráculo — operator's dashboard</h1></header>
<main><section class="wide"><h2>403: not allowed</h2><p>{e(viewer)}: {e(why)}</p>
<p><a href="/hub/home">Back to the hub</a></p></section></main></body></html>"""


def utc(ts: float) -> str:
    return dt.datetime.fromtimestamp(ts, dt.UTC).strftime("%Y-%m-%d %H:%M UTC")
