"""The operator's dashboard as a Panel app: one :class:`OperatorBoard` per page (Bokeh session).

Everything it shows is read, and everything it does is done, with the hub token of the person
looking (:class:`~.auth.Viewer`), through :class:`~.data.Upstreams`; polars shapes the numbers
(:func:`~.data.shape`), Bokeh draws the charts, and the tables are HTML drawn by :mod:`.render`.

Stable hooks for tests: ``[data-testid=operator-dashboard]`` (``data-state`` loading, ready or
error; ``data-period`` once ready), ``flash`` (what the last action did), ``totals``,
``chart-tokens``, ``chart-cost``, ``chart-cpu``, ``chart-voice`` (each chart's legend, with
``[data-key]`` per series), the tables ``top-spenders``, ``groups``, ``models``, ``servers``,
``budgets``, ``refusals``, ``model-service``, ``requests``, ``gpus``; the widgets carry the CSS
classes ``board-period``, ``stop-user``, ``stop-server``, ``budget-scope``, ``budget-name``,
``budget-period``, ``budget-unit``, ``budget-limit``, ``budget-set``, ``budget-remove``.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import logging
import time
from collections.abc import Awaitable
from typing import Any
from urllib.parse import quote

import httpx
import panel as pn
import param
import polars as pl
from bokeh.models import ColumnDataSource, FactorRange
from bokeh.plotting import figure
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from . import render
from .auth import SESSIONS, Viewer
from .data import (
    PERIODS,
    UNITS,
    Throughput,
    UpstreamError,
    Upstreams,
    gpu_memory,
    parse_metrics,
    shape,
)
from .data import servers as server_rows

_log = logging.getLogger(__name__)

BUDGETS_WRITE = "custom:oraculo:budgets:write"
TEST_ID = "operator-dashboard"

#: The charts: (key in :attr:`~.data.Shaped.charts`, test id, title).
CHARTS = [
    ("tokens_by_model", "chart-tokens", "Model tokens per day, by model"),
    ("cost_by_user", "chart-cost", "Cost per day, by user"),
    ("cpu_by_user", "chart-cpu", "Kernel CPU seconds per day, by user"),
    ("voice_by_group", "chart-voice", "Voice seconds per day, by group"),
]


class BudgetForm(BaseModel):
    model_config = ConfigDict(extra="ignore")

    scope: str = Field(pattern=r"^(user|group)$")
    name: str = Field(pattern=r"^(\*|[^\s,]{1,255})$")
    period: str = Field(pattern=r"^(day|month)$")
    unit: str = Field(pattern=r"^(tokens|cpu_seconds|gpu_seconds|voice_seconds|cost)$")
    limit: float = Field(ge=0)


def users_table(
    hub_users: list[dict[str, Any]], spent: list[dict[str, Any]]
) -> list[dict[str, Any]]:
    """Every hub user (admin or not, their groups) with their use, top spenders first."""
    info = {u["name"]: u for u in hub_users}
    rows = []
    for r in spent:
        u = info.pop(r["user"], {})
        rows.append({**r, "admin": "yes" if u.get("admin") else "", "groups": _groups(u)})
    for name, u in sorted(info.items()):
        zero = dict.fromkeys(("requests", *UNITS), 0)
        rows.append(
            {"user": name, **zero, "admin": "yes" if u.get("admin") else "", "groups": _groups(u)}
        )
    return rows


def _groups(u: dict[str, Any]) -> str:
    return ", ".join(sorted(u.get("groups") or []))


def chart(wide: pl.DataFrame, unit: str, title: str) -> Any:
    """Bars per day, stacked by the other columns of ``wide`` (``date`` by key)."""
    keys = [c for c in wide.columns if c != "date"]
    days = [d.strftime("%m-%d") if d else "" for d in wide["date"].to_list()]
    fig = figure(
        title=title,
        x_range=FactorRange(factors=days),
        height=240,
        sizing_mode="stretch_width",
        toolbar_location=None,
        tools="",
    )
    if keys:
        # the series under fixed names: a user or group may be called anything, "date" included
        fields = [f"k{i}" for i in range(len(keys))]
        data: dict[str, list[Any]] = {"day": days}
        for field, key in zip(fields, keys, strict=True):
            data[field] = [float(v) for v in wide[key].to_list()]
        fig.vbar_stack(
            fields,
            x="day",
            width=0.8,
            color=[render.PALETTE[i % len(render.PALETTE)] for i in range(len(keys))],
            source=ColumnDataSource(data),
            legend_label=keys,
        )
        fig.legend.location = "top_left"
        fig.legend.label_text_font_size = "10px"
    fig.y_range.start = 0  # type: ignore[attr-defined]
    fig.yaxis.axis_label = render.UNIT_LABELS[unit]
    fig.xgrid.grid_line_color = None
    return fig


def legend(wide: pl.DataFrame, unit: str, testid: str) -> str:
    keys = [c for c in wide.columns if c != "date"]
    items = "".join(
        f'<span data-key="{render.e(k)}"><i style="background:'
        f'{render.PALETTE[i % len(render.PALETTE)]}"></i>{render.e(k)}: '
        f"{render.num(float(wide[k].sum()), unit)}</span>"
        for i, k in enumerate(keys)
    )
    return (
        f'<div class="legend" data-testid="{render.e(testid)}" data-unit="{render.e(unit)}">'
        f"{items or 'Nothing in this period.'}</div>"
    )


def _section(title: str, *objects: Any, wide: bool = False) -> pn.Column:
    return pn.Column(
        pn.pane.HTML(f"<h2>{render.e(title)}</h2>", stylesheets=[render.CSS], margin=(0, 8)),
        *objects,
        sizing_mode="stretch_width",
        styles={"background": "#fff", "border-radius": "8px", "padding": "8px 12px"},
        css_classes=["board-section", "wide" if wide else "narrow"],
    )


def _html(text: str = "") -> pn.pane.HTML:
    return pn.pane.HTML(text, stylesheets=[render.CSS], sizing_mode="stretch_width")


class OperatorBoard(pn.viewable.Viewer):
    """Users and groups, servers, usage over time, budgets, refusals and the model service, for
    one viewer, with the actions an operator takes (stop a server, set or remove a budget)."""

    period: Any = param.Selector(default="week", objects=list(PERIODS), doc="The period shown.")
    error = param.String(default="", doc="Why the last refresh failed; empty when it succeeded.")

    def __init__(
        self, viewer: Viewer, upstreams: Upstreams, throughput: Throughput, **params: Any
    ) -> None:
        super().__init__(**params)
        self.viewer, self.upstreams, self.throughput = viewer, upstreams, throughput
        self._state = _html(self._marker("loading"))
        self._flash = _html()
        self._totals = _html()
        self._legends = {key: _html() for key, _, _ in CHARTS}
        self._charts = {key: pn.pane.Bokeh(sizing_mode="stretch_width") for key, _, _ in CHARTS}
        self._tables = {
            name: _html()
            for name in (
                "users",
                "groups",
                "models",
                "servers",
                "budgets",
                "refusals",
                "model_service",
                "gpus",
            )
        }
        self._select = pn.widgets.RadioButtonGroup(
            options={"Today": "day", "7 days": "week", "30 days": "month"},
            value=self.period,
            css_classes=["board-period"],
        )
        self._select.param.watch(self._on_period, "value")
        refresh = pn.widgets.Button(name="Refresh", button_type="primary", width=90)
        refresh.on_click(self._on_refresh)
        self._stop_user = pn.widgets.Select(
            name="Server of", options=[], width=180, css_classes=["stop-user"]
        )
        stop = pn.widgets.Button(
            name="Stop server", button_type="danger", width=120, css_classes=["stop-server"]
        )
        stop.on_click(self._on_stop)
        self._form: dict[str, Any] = {
            "scope": pn.widgets.Select(
                name="Scope", options=["user", "group"], width=90, css_classes=["budget-scope"]
            ),
            "name": pn.widgets.TextInput(
                name="Name", placeholder="name or *", width=140, css_classes=["budget-name"]
            ),
            "period": pn.widgets.Select(
                name="Period", options=["day", "month"], width=90, css_classes=["budget-period"]
            ),
            "unit": pn.widgets.Select(
                name="Unit", options=list(UNITS), width=140, css_classes=["budget-unit"]
            ),
            "limit": pn.widgets.TextInput(
                name="Limit", placeholder="0 or more", width=100, css_classes=["budget-limit"]
            ),
        }
        set_budget = pn.widgets.Button(
            name="Set budget", button_type="primary", width=110, css_classes=["budget-set"]
        )
        set_budget.on_click(self._on_set_budget)
        remove_budget = pn.widgets.Button(
            name="Remove budget", width=130, css_classes=["budget-remove"]
        )
        remove_budget.on_click(self._on_remove_budget)
        links = (
            f'<span class="who">{render.e(viewer.name)} · <a href="/hub/home">Hub</a> · '
            '<a href="/hub/admin">Hub admin</a></span>'
        )
        t = self._tables
        self._layout = pn.Column(
            pn.Row(
                _html('<h1 style="white-space:nowrap">Oráculo — operator\'s dashboard</h1>'),
                pn.HSpacer(),
                self._select,
                refresh,
                _html(links),
                align="center",
                sizing_mode="stretch_width",
            ),
            self._state,
            self._flash,
            _section("Everyone, this period", self._totals, wide=True),
            pn.GridBox(
                *(
                    _section(title, self._legends[key], self._charts[key])
                    for key, _, title in CHARTS
                ),
                ncols=2,
                sizing_mode="stretch_width",
            ),
            _section("Users, top spenders first", t["users"], wide=True),
            pn.GridBox(
                _section("Groups", t["groups"]),
                _section("Models", t["models"]),
                ncols=2,
                sizing_mode="stretch_width",
            ),
            _section(
                "Servers", t["servers"], pn.Row(self._stop_user, stop, align="end"), wide=True
            ),
            _section(
                "Budgets, and who is near them",
                t["budgets"],
                pn.Row(*self._form.values(), set_budget, remove_budget, align="end"),
                wide=True,
            ),
            pn.GridBox(
                _section("Refused requests (rate limits, quotas, budgets)", t["refusals"]),
                _section("GPUs", t["gpus"]),
                ncols=2,
                sizing_mode="stretch_width",
            ),
            _section("Model service", t["model_service"], wide=True),
            sizing_mode="stretch_width",
            styles={"background": "#f5f6f8", "padding": "12px 20px"},
        )

    def _marker(self, state: str, message: str = "") -> str:
        extra, text = "", "Loading…"
        if state == "ready":
            when = dt.datetime.now(dt.UTC).strftime("%H:%M:%S")
            extra, text = f' data-period="{self.period}"', f"Updated {when} UTC"
        inner = f'<div class="flash bad">{render.e(message)}</div>' if message else ""
        return (
            f'<div data-testid="{TEST_ID}" data-state="{state}"{extra}>'
            f'<span class="sub">{text}</span>{inner}</div>'
        )

    def _say(self, kind: str, text: str) -> None:
        when = dt.datetime.now(dt.UTC).strftime("%H:%M:%S")
        self._flash.object = (
            f'<div class="flash {kind}" data-testid="flash" data-kind="{kind}">'
            f"{render.e(text)} <small>({when} UTC)</small></div>"
        )

    async def refresh(self) -> None:
        try:
            raw = await self.upstreams.gather(self.period)
        except UpstreamError as e:
            self.error = f"an upstream refused: {e}"
            self._state.object = self._marker("error", self.error)
            return
        except httpx.HTTPError as e:
            _log.warning("an upstream did not answer: %s", e)
            self.error = f"an upstream did not answer ({type(e).__name__})"
            self._state.object = self._marker("error", self.error)
            return
        gpus = await asyncio.to_thread(gpu_memory)
        since = raw.now - PERIODS[self.period] * 86400
        shaped = shape(raw.daily, since, raw.now, raw.budgets)
        members = {g["name"]: len(g.get("users") or []) for g in raw.groups}
        group_rows = [{**r, "members": members.get(r["group"], "")} for r in shaped.groups]
        known = {r["group"] for r in group_rows}
        group_rows += [{"group": g, "members": n} for g, n in members.items() if g not in known]
        metrics = parse_metrics(raw.metrics)
        throughput = self.throughput.update(metrics.tokens, time.time())
        running = server_rows(raw)
        self._totals.object = render.totals(shaped.totals, render.utc(since))
        for key, testid, title in CHARTS:
            wide, unit = shaped.charts[key]
            self._legends[key].object = legend(wide, unit, testid)
            self._charts[key].object = chart(wide, unit, title)
        t = self._tables
        t["users"].object = render.table(
            users_table(raw.users, shaped.users), render.USER_COLUMNS, "top-spenders"
        )
        t["groups"].object = render.table(group_rows, render.GROUP_COLUMNS, "groups")
        t["models"].object = render.table(shaped.models, render.MODEL_USE_COLUMNS, "models")
        t["servers"].object = render.servers(running, gpus)
        t["budgets"].object = render.budgets(shaped.budgets)
        t["refusals"].object = render.table(
            raw.daily.get("refusals") or [],
            render.REFUSAL_COLUMNS,
            "refusals",
            empty="No refusals.",
        )
        t["model_service"].object = render.model_service(metrics, throughput)
        t["gpus"].object = render.gpus(gpus)
        names = sorted({r["user"] for r in running})
        self._stop_user.options = names
        if names and self._stop_user.value not in names:
            self._stop_user.value = names[0]
        self.error = ""
        self._state.object = self._marker("ready")

    # --- actions, each with the viewer's own token ----------------------------------------------

    async def stop_server(self, user: str) -> None:
        if not user:
            self._say("bad", "Say whose server to stop.")
            return
        try:
            await self.upstreams.stop_server(quote(user, safe=""))
        except httpx.HTTPError as e:
            self._say("bad", f"The hub did not answer ({type(e).__name__}).")
            return
        except UpstreamError as e:
            _log.warning("could not stop %r's server: %s %s", user, e.status, e)
            self._say("bad", f"The hub refused to stop {user}'s server ({e.status}).")
            return
        _log.info("%s stopped %s's server", self.viewer.name, user)
        self._say("good", f"Stopping {user}'s server.")
        await self.refresh()

    def _fields(self) -> dict[str, Any]:
        f = self._form
        return {
            "scope": f["scope"].value,
            "name": (f["name"].value_input or f["name"].value or "").strip(),
            "period": f["period"].value,
            "unit": f["unit"].value,
            "limit": (f["limit"].value_input or f["limit"].value or "").strip(),
        }

    async def set_budget(self, fields: dict[str, Any]) -> None:
        try:
            form = BudgetForm.model_validate(fields)
        except ValidationError as e:
            _log.info("not a budget: %s", str(e).splitlines()[0])
            self._say(
                "bad",
                "Budget refused: give a user or group name (or *), day or month, a unit and a "
                "limit of 0 or more.",
            )
            return
        if not await self._budget_change(self.upstreams.put_budget(form.model_dump())):
            return
        _log.info("%s set budget %s", self.viewer.name, form.model_dump())
        self._say("good", "Budget set; it applies at once (see Budgets).")
        await self.refresh()

    async def remove_budget(self, fields: dict[str, Any]) -> None:
        key = {k: str(fields[k]) for k in ("scope", "name", "period", "unit")}
        if not await self._budget_change(self.upstreams.delete_budget(key)):
            return
        _log.info("%s removed budget %s", self.viewer.name, key)
        self._say("good", "Budget removed.")
        await self.refresh()

    async def _budget_change(self, change: Awaitable[Any]) -> bool:
        """Await a budget change at the model service; say why where it did not happen."""
        try:
            await change
        except httpx.HTTPError as e:
            self._say("bad", f"The model service did not answer ({type(e).__name__}).")
            return False
        except UpstreamError as e:
            self._refused(e)
            return False
        return True

    def _refused(self, e: UpstreamError) -> None:
        _log.warning("the model service refused a budget change: %s %s", e.status, e)
        if e.status == 403:
            self._say("bad", f"The model service refused: changing budgets needs {BUDGETS_WRITE}.")
        elif e.status == 404:
            self._say("bad", "No such budget to remove.")
        else:
            self._say("bad", f"The model service refused that budget: {e}")

    async def _on_period(self, event: Any) -> None:
        self.period = event.new
        await self.refresh()

    async def _on_refresh(self, event: Any) -> None:
        await self.refresh()

    async def _on_stop(self, event: Any) -> None:
        await self.stop_server(self._stop_user.value or "")

    async def _on_set_budget(self, event: Any) -> None:
        await self.set_budget(self._fields())

    async def _on_remove_budget(self, event: Any) -> None:
        await self.remove_budget(self._fields())

    def __panel__(self) -> pn.viewable.Viewable:
        return self._layout


def create_board(viewer: Viewer | None, hub_api: str, models: str, throughput: Throughput) -> Any:
    """The board for the viewer whose page is being made (claiming this session for them)."""
    doc = pn.state.curdoc
    if viewer is None or doc is None or doc.session_context is None:
        # a session made some other way than by a signed-in page: nothing to show
        return pn.pane.HTML("Reload the page to sign in again.")
    session_id = doc.session_context.id
    SESSIONS.claim(session_id, viewer)
    doc.on_session_destroyed(lambda ctx: SESSIONS.release(ctx.id))
    period = (pn.state.session_args.get("period") or [b""])[0].decode()
    board = OperatorBoard(
        viewer,
        Upstreams(hub_api, models, viewer.token),
        throughput,
        **({"period": period} if period in PERIODS else {}),
    )
    pn.state.onload(board.refresh)
    return board
