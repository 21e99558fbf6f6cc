"""The Usage panel: this user's usage over time in each unit, against their budgets.

A client of the extension's public API like the other panels: it reads ``GET api/v1/usage``
(totals per unit and model from the model service, the budgets that bound the user with what is
used and when they reset, and the period's usage rows), aggregates the rows with polars into
hourly (today) or daily (week, month) buckets and draws them with Bokeh, every asset served by
the panel server itself.

Stable hooks for tests: ``[data-testid=oraculo-usage]`` (``data-state`` loading, ready or
error; ``data-period`` once ready), ``usage-totals``, ``usage-budgets``, ``usage-top``,
``usage-executions`` (rows ``[data-execution]``: the most expensive executions, from
``GET api/v1/usage/executions``), ``usage-operator-link`` (only for a user who may read
everyone's usage); the period selector carries the CSS class ``usage-period``.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import html
from typing import Any

import panel as pn
import param
import polars as pl
from bokeh.models import ColumnDataSource
from bokeh.models.annotations import Span
from bokeh.plotting import figure

from oraculo.extensions.panels.client import ServerAPIError, ServerClient

TEST_ID = "oraculo-usage"

#: The units charted, with their labels.
UNITS = {
    "tokens": "Model tokens",
    "cpu_seconds": "Kernel CPU seconds",
    "gpu_seconds": "Kernel GPU seconds",
    "voice_seconds": "Voice seconds",
}
PERIODS = {"Today": "day", "This week": "week", "This month": "month"}
_PERIODS = {"day": "Daily", "month": "Monthly"}

CSS = """
:host { width: 100%; }
.ous { font-family: system-ui, -apple-system, "Segoe UI", Roboto, sans-serif; color: #1f2933; }
.ous-grid { display: grid; grid-template-columns: repeat(auto-fit, minmax(180px, 1fr)); gap: 12px; }
.ous-card { background: #fff; border: 1px solid #e4e7eb; border-radius: 10px; padding: 12px 16px; }
.ous-card h2 { font-size: 12px; font-weight: 600; letter-spacing: .06em; text-transform: uppercase;
               color: #616e7c; margin: 0 0 6px; }
.ous-big { font-size: 22px; font-weight: 600; margin: 0; }
.ous-sub { font-size: 12px; color: #616e7c; margin: 4px 0 0; }
.ous table { width: 100%; border-collapse: collapse; font-size: 13px; }
.ous th { text-align: left; font-weight: 600; color: #616e7c; font-size: 12px;
          border-bottom: 1px solid #e4e7eb; padding: 6px 8px; }
.ous td { padding: 6px 8px; border-bottom: 1px solid #f0f2f4; }
.ous-bar { height: 8px; background: #f0f2f4; border-radius: 4px; overflow: hidden; margin: 6px 0; }
.ous-bar > span { display: block; height: 100%; background: #2f9e44; }
.ous-bar.over > span { background: #e03131; } .ous-bar.near > span { background: #f08c00; }
.ous-error { background: #fff5f5; border: 1px solid #ffc9c9; color: #c92a2a; border-radius: 10px;
             padding: 12px 16px; }
"""


class UsageClient(ServerClient):
    """Reads ``GET <server>/api/v1/usage`` with the panel's credential."""

    path = "api/v1/usage"
    timeout = 30.0

    async def fetch(self, period: str) -> dict[str, Any]:
        data: dict[str, Any] = await self.request("GET", "", params={"period": period})
        return data

    async def executions(self, period: str, limit: int = 10) -> list[dict[str, Any]]:
        """The period's most expensive executions on the user's behalf."""
        data = await self.request(
            "GET", "/executions", params={"period": period, "limit": str(limit)}
        )
        return list(data["data"])


def _e(value: Any) -> str:
    return html.escape(str(value), quote=True)


def _num(value: float) -> str:
    if value >= 100 or float(value).is_integer():
        return f"{value:,.0f}"
    return f"{value:,.2f}"


# --- aggregation (polars) -----------------------------------------------------------------------


def frame(events: dict[str, Any]) -> pl.DataFrame:
    """The usage rows as a frame, with ``tokens`` and a UTC ``time`` column."""
    columns = list(events.get("columns") or [])
    rows = events.get("rows") or []
    schema = {
        "ts": pl.Float64,
        "model": pl.String,
        "endpoint": pl.String,
        "status": pl.Int64,
        "prompt_tokens": pl.Int64,
        "completion_tokens": pl.Int64,
        "cpu_seconds": pl.Float64,
        "gpu_seconds": pl.Float64,
        "voice_seconds": pl.Float64,
        "ref": pl.String,
        "error_type": pl.String,
    }
    df = pl.DataFrame(rows, schema={c: schema.get(c, pl.String) for c in columns}, orient="row")
    if df.is_empty():
        df = pl.DataFrame(schema=schema)
    return df.with_columns(
        pl.col("cpu_seconds", "gpu_seconds", "voice_seconds").fill_null(0.0),
        (pl.col("prompt_tokens").fill_null(0) + pl.col("completion_tokens").fill_null(0)).alias(
            "tokens"
        ),
        pl.from_epoch((pl.col("ts") * 1000).cast(pl.Int64), time_unit="ms")
        .dt.replace_time_zone("UTC")
        .alias("time"),
    )


def buckets(df: pl.DataFrame, period: str) -> pl.DataFrame:
    """Each unit summed per hour (``day``) or per day (``week``, ``month``), oldest first."""
    every = "1h" if period == "day" else "1d"
    return (
        df.with_columns(pl.col("time").dt.truncate(every).alias("bucket"))
        .group_by("bucket")
        .agg(pl.col(*UNITS).sum())
        .sort("bucket")
    )


def top_items(df: pl.DataFrame, limit: int = 8) -> pl.DataFrame:
    """The most expensive things this period: kernels by CPU seconds (summed over their
    reports), conversations and agent runs by tokens (summed over their requests), other model
    requests by tokens, voice requests by seconds."""
    kernels = (
        df.filter(pl.col("endpoint") == "kernel")
        .group_by("ref", "model")
        .agg(pl.col("cpu_seconds").sum().alias("amount"), pl.col("time").max())
        .select(
            pl.lit("kernel").alias("kind"),
            pl.format("{} {}", pl.col("model"), pl.col("ref").str.slice(0, 8)).alias("what"),
            pl.col("amount"),
            pl.lit("CPU s").alias("unit"),
            pl.col("time"),
        )
    )
    requests = df.filter(pl.col("endpoint") != "kernel")
    voice = requests.filter(pl.col("voice_seconds") > 0).select(
        pl.col("endpoint").alias("kind"),
        pl.col("model").alias("what"),
        pl.col("voice_seconds").alias("amount"),
        pl.lit("voice s").alias("unit"),
        pl.col("time"),
    )
    spent = requests.filter(pl.col("tokens") > 0)
    # requests that named their conversation or agent run (``conversation:<id>``, ``run:<id>``)
    # count together, as that conversation or run
    owned = spent.filter(pl.col("ref").fill_null("").str.contains(":"))
    tokens = spent.filter(~pl.col("ref").fill_null("").str.contains(":")).select(
        pl.col("endpoint").alias("kind"),
        pl.col("model").alias("what"),
        pl.col("tokens").cast(pl.Float64).alias("amount"),
        pl.lit("tokens").alias("unit"),
        pl.col("time"),
    )
    grouped = (
        owned.group_by("ref")
        .agg(pl.col("tokens").sum().cast(pl.Float64).alias("amount"), pl.col("time").max())
        .select(
            pl.col("ref")
            .str.split_exact(":", 1)
            .struct.field("field_0")
            .replace({"run": "agent run"})
            .alias("kind"),
            pl.col("ref").str.split_exact(":", 1).struct.field("field_1").alias("what"),
            pl.col("amount"),
            pl.lit("tokens").alias("unit"),
            pl.col("time"),
        )
    )
    parts = [p for p in (kernels, voice, grouped, tokens) if not p.is_empty()]
    if not parts:
        return pl.DataFrame(
            schema={"kind": pl.String, "what": pl.String, "amount": pl.Float64, "unit": pl.String}
        )
    ranked = pl.concat(parts, how="vertical_relaxed").with_columns(
        (pl.col("amount") / pl.col("amount").max().over("unit")).alias("share")
    )
    return ranked.sort(["share", "amount"], descending=True).head(limit).drop("share")


# --- rendering ----------------------------------------------------------------------------------


def render_totals(summary: dict[str, Any]) -> str:
    t = summary.get("totals") or {}
    cards = "".join(
        f'<div class="ous-card"><h2>{_e(label)}</h2>'
        f'<p class="ous-big" data-unit="{unit}">{_num(float(t.get(unit, 0)))}</p></div>'
        for unit, label in UNITS.items()
    )
    cost = float(t.get("cost", 0))
    cards += (
        f'<div class="ous-card"><h2>Cost</h2><p class="ous-big" data-unit="cost">{cost:,.4f}</p>'
        f'<p class="ous-sub">{_e(summary.get("since", ""))[:10]} to '
        f"{_e(summary.get('until', ''))[:10]}</p></div>"
    )
    models = summary.get("models") or []
    rows = "".join(
        f"<tr><td>{_e(m['model'])}</td><td>{_num(m['tokens'])}</td>"
        f"<td>{_num(m['cpu_seconds'])}</td><td>{_num(m['voice_seconds'])}</td>"
        f"<td>{float(m['cost']):,.4f}</td></tr>"
        for m in models
    )
    table = (
        '<div class="ous-card" style="grid-column:1/-1"><h2>Per model</h2><table><tr>'
        "<th>Model</th><th>Tokens</th><th>CPU s</th><th>Voice s</th><th>Cost</th></tr>"
        f"{rows or '<tr><td colspan=5>Nothing used yet.</td></tr>'}</table></div>"
    )
    return f'<div class="ous ous-grid" data-testid="usage-totals">{cards}{table}</div>'


def render_operator(url: str | None) -> str:
    """A link to the operator's dashboard, for a user who may read everyone's usage."""
    if not url:
        return ""
    return (
        '<p class="ous ous-sub">You may read everyone\'s usage: '
        f'<a data-testid="usage-operator-link" href="{_e(url)}" target="_blank" rel="noopener">'
        "Operator's dashboard</a> (users, servers, budgets, top spenders).</p>"
    )


def render_budgets(budgets: list[dict[str, Any]]) -> str:
    if not budgets:
        body = '<p class="ous-sub">No budget bounds you.</p>'
    else:
        items = []
        for b in budgets:
            limit, used = float(b["limit"]), float(b["used"])
            share = 1.0 if limit <= 0 else min(1.0, used / limit)
            level = "over" if b.get("exceeded") else "near" if share >= 0.8 else ""
            whose = "you" if b["scope"] == "user" else f"group {b['name']}"
            items.append(
                f'<div data-budget="{_e(b["unit"])}"><strong>{_PERIODS[b["period"]]} '
                f"{_e(UNITS.get(b['unit'], b['unit']))}</strong> ({_e(whose)}): "
                f"{_num(used)} of {_num(limit)}"
                f'<div class="ous-bar {level}"><span style="width:{share * 100:.1f}%"></span></div>'
                f'<p class="ous-sub">Resets at {_e(b["resets_at"])}'
                f"{' — spent: new work is refused until then' if b.get('exceeded') else ''}</p>"
                "</div>"
            )
        body = "".join(items)
    return f'<div class="ous ous-card" data-testid="usage-budgets"><h2>Budgets</h2>{body}</div>'


def render_top(top: pl.DataFrame) -> str:
    rows = "".join(
        f"<tr><td>{_e(r['kind'])}</td><td><code>{_e(r['what'])}</code></td>"
        f"<td>{_num(float(r['amount']))} {_e(r['unit'])}</td></tr>"
        for r in top.iter_rows(named=True)
    )
    return (
        '<div class="ous ous-card" data-testid="usage-top"><h2>Most expensive</h2><table>'
        "<tr><th>What</th><th></th><th>Used</th></tr>"
        f"{rows or '<tr><td colspan=3>Nothing used yet.</td></tr>'}</table></div>"
    )


def _when(iso: Any) -> str:
    t = str(iso or "")
    return t[:19].replace("T", " ") + " UTC" if t else ""


def _source(e: dict[str, Any]) -> str:
    if e.get("conversation_id"):
        return f"conversation {e['conversation_id']}"
    if e.get("run_id"):
        return f"agent run {e['run_id']}"
    return ""


def render_executions(executions: list[dict[str, Any]]) -> str:
    """The most expensive executions: origin, when, CPU seconds (the kernel's; its wall time
    where the kernel's CPU was not knowable, marked so), wall time, the code's first line and
    the conversation or run it came from."""
    rows = "".join(
        f'<tr data-execution="{_e(e["execution_id"])}"><td>{_e(e["origin"])}</td>'
        f"<td>{_e(_when(e.get('started_at') or e.get('finished_at')))}</td>"
        f"<td>{float(e['cpu_seconds']):,.2f}"
        f"{'' if e.get('cpu_source') == 'kernel' else ' (wall)'}</td>"
        f"<td>{float(e['duration_seconds']):,.2f}</td>"
        f"<td><code>{_e(e.get('code_first_line', ''))}</code></td>"
        f"<td>{_e(_source(e))}</td><td>{_e(e.get('status', ''))}</td></tr>"
        for e in executions
    )
    return (
        '<div class="ous ous-card" data-testid="usage-executions"><h2>Most expensive executions'
        '</h2><p class="ous-sub">Code run for you by the API, chat, agents and MCP (not your '
        "notebook's own cells). CPU s is the kernel's CPU time over the execution; where the "
        "kernel's process could not be read it is the wall time, marked (wall).</p><table>"
        "<tr><th>Origin</th><th>When</th><th>CPU s</th><th>Wall s</th><th>Code</th>"
        "<th>From</th><th>Status</th></tr>"
        f"{rows or '<tr><td colspan=7>No executions this period.</td></tr>'}</table></div>"
    )


def chart(per: pl.DataFrame, unit: str, period: str, budgets: list[dict[str, Any]]) -> Any:
    """Bars of ``unit`` per bucket; a budget over the bucket's span is drawn as a red line."""
    width = 3_000_000 if period == "day" else 72_000_000  # ms: most of an hour / a day
    source = ColumnDataSource(
        {"bucket": per["bucket"].to_list(), "value": per[unit].to_list()}
        if not per.is_empty()
        else {"bucket": [], "value": []}
    )
    fig = figure(
        title=UNITS[unit],
        x_axis_type="datetime",
        height=220,
        sizing_mode="stretch_width",
        toolbar_location=None,
        tools="",
    )
    fig.vbar(x="bucket", top="value", width=width, source=source, color="#3b5bdb", alpha=0.85)
    span_period = "day" if period in ("day", "week") else "month"
    for b in budgets:
        if b["unit"] == unit and (b["period"] == "day" or span_period == "month"):
            fig.add_layout(
                Span(
                    location=float(b["limit"]),
                    dimension="width",
                    line_color="#e03131",
                    line_dash="dashed",
                    line_width=2,
                )
            )
    fig.y_range.start = 0  # type: ignore[attr-defined]
    return fig


class UsagePanel(pn.viewable.Viewer):
    """This user's usage, charted against their budgets."""

    period: Any = param.Selector(
        default="week", objects=list(PERIODS.values()), doc="The period shown."
    )
    data = param.Dict(default=None, allow_None=True, doc="The last answer of api/v1/usage.")
    error = param.String(default="", doc="Why the last refresh failed; empty when it succeeded.")

    def __init__(self, client: UsageClient, **params: Any) -> None:
        super().__init__(**params)
        self._client = client
        self._state = pn.pane.HTML(self._marker("loading"), sizing_mode="stretch_width")
        self._totals = pn.pane.HTML("", stylesheets=[CSS], sizing_mode="stretch_width")
        self._budgets = pn.pane.HTML("", stylesheets=[CSS], sizing_mode="stretch_width")
        self._top = pn.pane.HTML("", stylesheets=[CSS], sizing_mode="stretch_width")
        self._executions = pn.pane.HTML("", stylesheets=[CSS], sizing_mode="stretch_width")
        self._operator = pn.pane.HTML("", stylesheets=[CSS], sizing_mode="stretch_width")
        self._charts = pn.GridBox(ncols=2, sizing_mode="stretch_width")
        self._select = pn.widgets.RadioButtonGroup(
            options=PERIODS, value=self.period, css_classes=["usage-period"]
        )
        self._select.param.watch(self._on_period, "value")
        refresh = pn.widgets.Button(name="Refresh", button_type="primary", width=100)
        refresh.on_click(self._on_click)
        self._layout = pn.Column(
            pn.Row(
                pn.pane.HTML(
                    '<h1 style="margin:0;font:600 24px system-ui,sans-serif;color:#1f2933">'
                    "Usage</h1>"
                ),
                pn.HSpacer(),
                self._select,
                refresh,
                align="center",
                sizing_mode="stretch_width",
            ),
            self._state,
            self._operator,
            self._totals,
            self._budgets,
            self._charts,
            self._top,
            self._executions,
            sizing_mode="stretch_width",
            styles={"max-width": "1100px", "margin": "0 auto", "padding": "24px"},
        )

    def _marker(self, state: str, message: str = "") -> str:
        inner = f'<div class="ous-error">{_e(message)}</div>' if message else ""
        return f'<div class="ous" data-testid="{TEST_ID}" data-state="{state}">{inner}</div>'

    async def refresh(self) -> None:
        try:
            data, executions = await asyncio.gather(
                self._client.fetch(self.period), self._client.executions(self.period)
            )
        except ServerAPIError as e:
            self.error = str(e)
            self._state.object = self._marker("error", self.error)
            return
        self.data, self.error = data, ""
        df = frame(data.get("events") or {})
        per = buckets(df, self.period)
        budgets = data.get("budgets") or []
        self._operator.object = render_operator(data.get("operator_dashboard"))
        self._totals.object = render_totals(data.get("summary") or {})
        self._budgets.object = render_budgets(budgets)
        self._top.object = render_top(top_items(df))
        self._executions.object = render_executions(executions)
        self._charts.objects = [
            pn.pane.Bokeh(chart(per, unit, self.period, budgets), sizing_mode="stretch_width")
            for unit in UNITS
        ]
        when = dt.datetime.now(dt.UTC).strftime("%H:%M:%S")
        self._state.object = self._marker("ready").replace(
            "></div>", f' data-period="{self.period}" data-updated="{when}"></div>'
        )

    async def _on_period(self, event: Any) -> None:
        self.period = event.new
        await self.refresh()

    async def _on_click(self, event: Any) -> None:
        await self.refresh()

    def start(self) -> None:
        pn.state.onload(self.refresh)

    def __panel__(self) -> pn.viewable.Viewable:
        return self._layout


def create_app() -> UsagePanel:
    """The Usage page, reading the usage of the server's user."""
    if pn.state.curdoc is not None:
        rel = pn.state.rel_path or "."
        pn.state.curdoc.template_variables["app_favicon"] = f"{rel}/oraculo/usage.svg"
    panel = UsagePanel(UsageClient.from_environment())
    panel.start()
    return panel
