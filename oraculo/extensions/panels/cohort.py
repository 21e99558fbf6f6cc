"""The Cohort panel: a cohort's assignments, submissions and scores, and its AI usage this week.

A client of the extension's public API like the other panels: ``GET api/v1/courses`` (the
cohorts this server belongs to or teaches), ``GET api/v1/courses/<cohort>`` (assignments; for
the instructor, every submission's score from nbgrader's gradebook),
``POST api/v1/courses/<cohort>/assignments/<name>/<step>`` (the nbgrader steps) and
``GET api/v1/courses/<cohort>/usage`` (the model service's usage of the cohort this week, per
student where the service gives it). The usage is aggregated with polars and charted with Bokeh,
every asset served by the panel server itself. For the instructor it also shows the cohort as
the hub sees it (``GET api/v1/courses/<cohort>/roster``): members and their servers, sign-ups
waiting, and what the AI policy does now.

One panel for both sides: the instructor releases, collects and autogrades, and returns
feedback; a student fetches, submits and fetches feedback.

Stable hooks for tests: ``[data-testid=oraculo-cohort]`` (``data-state`` loading, ready, busy
or error; ``data-cohort`` once ready), ``cohort-assignments`` (one ``tr[data-assignment]``
each), ``cohort-scores`` (one ``tr[data-student]`` each, ``data-score``), ``cohort-members`` (one
``tr[data-member]`` each, ``data-server``), ``cohort-pending``, ``cohort-policy`` (``data-ai``),
``cohort-usage``,
``cohort-notice`` (cohorts joined after the server started that need a restart: ``data-cohorts``)
and ``cohort-message``; buttons carry the CSS class ``cohort-<step>``. The instructor's policy
editor (``PUT api/v1/courses/<cohort>/policy``, which the server passes to the hub with its
token) has ``cohort-policy-ai``, ``cohort-policy-models``, ``cohort-policy-tokens``,
``cohort-policy-save``, ``cohort-exam-minutes``, ``cohort-exam-start`` and ``cohort-exam-end``
(CSS classes) and ``cohort-policy-message`` (``data-ok``).
"""

from __future__ import annotations

import datetime as dt
import html
from typing import Any
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

import panel as pn
import param
import polars as pl
from bokeh.models import ColumnDataSource, FactorRange
from bokeh.plotting import figure

from oraculo.extensions.panels.client import ServerAPIError, ServerClient

TEST_ID = "oraculo-cohort"
#: The units of a student's AI usage shown, with their labels.
UNITS = {"tokens": "Model tokens", "cpu_seconds": "Kernel CPU s", "voice_seconds": "Voice s"}
INSTRUCTOR_STEPS = {
    "release": "Release",
    "collect": "Collect & autograde",
    "feedback": "Return feedback",
}
STUDENT_STEPS = {"fetch": "Fetch", "submit": "Submit", "fetch_feedback": "Fetch feedback"}

CSS = """
:host { width: 100%; }
.oco { font-family: system-ui, -apple-system, "Segoe UI", Roboto, sans-serif; color: #1f2933; }
.oco-card { background: #fff; border: 1px solid #e4e7eb; border-radius: 10px; padding: 12px 16px; }
.oco-card h2 { font-size: 12px; font-weight: 600; letter-spacing: .06em; text-transform: uppercase;
               color: #616e7c; margin: 0 0 6px; }
.oco table { width: 100%; border-collapse: collapse; font-size: 13px; }
.oco th { text-align: left; font-weight: 600; color: #616e7c; font-size: 12px;
          border-bottom: 1px solid #e4e7eb; padding: 6px 8px; }
.oco td { padding: 6px 8px; border-bottom: 1px solid #f0f2f4; }
.oco-sub { font-size: 12px; color: #616e7c; margin: 4px 0 0; }
.oco-ok { color: #2b8a3e; } .oco-error { color: #c92a2a; }
"""


class CohortClient(ServerClient):
    """Reads and drives ``<server>/api/v1/courses`` with the panel's credential."""

    path = "api/v1/courses"
    timeout = 900.0  # autograde runs every submission

    async def cohorts(self) -> dict[str, Any]:
        data: dict[str, Any] = await self.request("GET", "")
        return data

    async def course(self, cohort: str) -> dict[str, Any]:
        data: dict[str, Any] = await self.request("GET", f"/{cohort}")
        return data

    async def roster(self, cohort: str) -> dict[str, Any]:
        data: dict[str, Any] = await self.request("GET", f"/{cohort}/roster")
        return data

    async def set_policy(self, cohort: str, policy: dict[str, Any]) -> dict[str, Any]:
        data: dict[str, Any] = await self.request("PUT", f"/{cohort}/policy", json=policy)
        return data

    async def usage(self, cohort: str) -> dict[str, Any]:
        data: dict[str, Any] = await self.request("GET", f"/{cohort}/usage")
        return data

    async def step(self, cohort: str, assignment: str, step: str) -> dict[str, Any]:
        data: dict[str, Any] = await self.request(
            "POST", f"/{cohort}/assignments/{assignment}/{step}"
        )
        return data


def _e(value: Any) -> str:
    return html.escape(str(value), quote=True)


# --- usage (polars) -----------------------------------------------------------------------------


def usage_frame(summary: dict[str, Any]) -> pl.DataFrame:
    """One row per student (or one for the whole cohort when the model service gives no
    per-user rows) with the units of :data:`UNITS`, most tokens first."""
    rows = summary.get("users")
    if not rows:
        totals = summary.get("totals") or {}
        rows = [{"user": "(whole cohort)", **totals}] if totals else []
    schema = {"user": pl.String, **dict.fromkeys(UNITS, pl.Float64)}
    df = (
        pl.DataFrame([{k: r.get(k) for k in schema} for r in rows], schema=schema, orient="row")
        if rows
        else pl.DataFrame(schema=schema)
    )
    return df.with_columns(pl.col(*UNITS).fill_null(0.0)).sort("tokens", descending=True)


def usage_chart(df: pl.DataFrame) -> Any:
    users = df["user"].to_list()
    fig = figure(
        x_range=FactorRange(*(users or ["-"])),
        title="Model tokens this week",
        height=220,
        sizing_mode="stretch_width",
        toolbar_location=None,
        tools="",
    )
    fig.vbar(
        x="user",
        top="tokens",
        width=0.7,
        source=ColumnDataSource({"user": users, "tokens": df["tokens"].to_list()}),
        color="#3b5bdb",
    )
    fig.y_range.start = 0  # type: ignore[attr-defined]
    return fig


# --- the policy editor -------------------------------------------------------------------------


def _utc_now() -> dt.datetime:
    return dt.datetime.now(dt.UTC).replace(microsecond=0)


def _window_bounds(w: dict[str, Any]) -> tuple[dt.datetime, dt.datetime] | None:
    try:
        zone = ZoneInfo(str(w.get("timezone") or "UTC"))
        start = dt.datetime.fromisoformat(str(w["start"]))
        end = dt.datetime.fromisoformat(str(w["end"]))
    except (KeyError, ValueError, ZoneInfoNotFoundError):
        return None
    aware = [t if t.tzinfo else t.replace(tzinfo=zone) for t in (start, end)]
    return aware[0], aware[1]


def with_exam_now(policy: dict[str, Any], minutes: int) -> dict[str, Any]:
    """``policy`` plus an exam window from now for ``minutes`` (UTC)."""
    now = _utc_now().replace(tzinfo=None)
    window = {
        "start": now.isoformat(),
        "end": (now + dt.timedelta(minutes=minutes)).isoformat(),
        "timezone": "UTC",
    }
    return {**policy, "exam_windows": [*(policy.get("exam_windows") or []), window]}


def without_current_exam(policy: dict[str, Any]) -> dict[str, Any]:
    """``policy`` without the exam windows open now (later ones stay)."""
    now = _utc_now()
    kept = []
    for w in policy.get("exam_windows") or []:
        bounds = _window_bounds(w)
        if bounds is None or not bounds[0] <= now < bounds[1]:
            kept.append(w)
    return {**policy, "exam_windows": kept}


def edited_policy(policy: dict[str, Any], ai: bool, models: str, tokens: str) -> dict[str, Any]:
    """``policy`` with the editor's fields: models comma-separated (empty: every model), tokens
    per student a day (empty: no limit; anything else goes to the hub, which says what is
    wrong with it)."""
    names = [m.strip() for m in models.split(",") if m.strip()]
    text = tokens.strip()
    limit: Any = None
    if text:
        try:
            limit = int(text)
        except ValueError:
            limit = text
    return {**policy, "ai": ai, "models": names or None, "tokens_per_day": limit}


# --- rendering ----------------------------------------------------------------------------------


def render_assignments(course: dict[str, Any]) -> str:
    rows = []
    for a in course.get("assignments") or []:
        if course.get("instructor"):
            state = "released" if a.get("released") else "not released"
            extra = f"{len(a.get('scores') or [])} graded"
        else:
            state = (
                "submitted"
                if a.get("submitted")
                else "fetched"
                if a.get("fetched")
                else ("released" if a.get("released") else "-")
            )
            extra = f"{len(a.get('feedback') or [])} feedback"
        rows.append(
            f'<tr data-assignment="{_e(a["name"])}" data-state="{_e(state)}">'
            f"<td>{_e(a['name'])}</td>"
            f"<td>{_e(state)}</td><td>{_e(extra)}</td></tr>"
        )
    body = "".join(rows) or "<tr><td colspan=3>No assignments yet.</td></tr>"
    return (
        '<div class="oco oco-card" data-testid="cohort-assignments"><h2>Assignments</h2>'
        f"<table><tr><th>Name</th><th>State</th><th></th></tr>{body}</table></div>"
    )


def render_scores(course: dict[str, Any]) -> str:
    if not course.get("instructor"):
        return ""
    rows = []
    for a in course.get("assignments") or []:
        for s in a.get("scores") or []:
            rows.append(
                f'<tr data-student="{_e(s["student"])}" data-assignment="{_e(a["name"])}" '
                f'data-score="{s["score"]:g}"><td>{_e(s["student"])}</td><td>{_e(a["name"])}</td>'
                f"<td>{s['score']:g} / {s['max_score']:g}</td>"
                f"<td>{_e((s.get('submitted_at') or '')[:16])}</td></tr>"
            )
    body = "".join(rows) or "<tr><td colspan=4>Nothing graded yet.</td></tr>"
    return (
        '<div class="oco oco-card" data-testid="cohort-scores"><h2>Submissions and scores</h2>'
        "<table><tr><th>Student</th><th>Assignment</th><th>Score</th><th>Submitted</th></tr>"
        f"{body}</table></div>"
    )


def render_roster(roster: dict[str, Any], error: str = "") -> str:
    """Members and their servers, sign-ups waiting, and what the policy does now."""
    if error:
        return (
            '<div class="oco oco-card" data-testid="cohort-members"><h2>Members</h2>'
            f'<p class="oco-sub">{_e(error)}</p></div>'
        )
    members = "".join(
        f'<tr data-member="{_e(m["name"])}" data-server="{_e(m["server"])}"><td>{_e(m["name"])}'
        f"</td><td>{_e(m['server'])}</td><td>{_e((m.get('last_activity') or '')[:16])}</td></tr>"
        for m in roster.get("members") or []
    )
    pending = ", ".join(_e(p) for p in roster.get("pending") or []) or "none"
    now = (roster.get("now") or {}).get("ai") or {"available": True}
    effect = (
        "AI is available to the cohort."
        if now.get("available")
        else str(now.get("message") or "AI is paused for the cohort.")
    )
    policy = roster.get("policy") or {}
    windows = policy.get("exam_windows") or []
    return (
        '<div class="oco oco-card" data-testid="cohort-members"><h2>Members</h2>'
        "<table><tr><th>Member</th><th>Server</th><th>Last active</th></tr>"
        f"{members or '<tr><td colspan=3>No members yet.</td></tr>'}</table>"
        f'<p class="oco-sub" data-testid="cohort-pending">Sign-ups waiting: {pending}</p></div>'
        '<div class="oco oco-card" data-testid="cohort-policy" '
        f'data-ai="{str(bool(now.get("available"))).lower()}"><h2>AI policy now</h2>'
        f"<p>{_e(effect)}</p>"
        f'<p class="oco-sub">Exam windows: {len(windows)}; models: '
        f"{_e(', '.join(policy.get('models') or []) or 'any')}; tokens per student a day: "
        f"{_e(policy.get('tokens_per_day') or 'no limit')}</p></div>"
    )


def render_notice(cohorts: list[str], notice: str) -> str:
    """What the student must do for cohorts joined after the server started (a restart)."""
    if not cohorts:
        return ""
    return (
        f'<div class="oco oco-card" data-testid="cohort-notice" '
        f'data-cohorts="{_e(",".join(cohorts))}" role="status">'
        f'<p class="oco-error">{_e(notice)}</p></div>'
    )


def render_usage(df: pl.DataFrame, error: str = "") -> str:
    if error:
        body = f'<p class="oco-sub">{_e(error)}</p>'
    else:
        rows = "".join(
            f'<tr data-user="{_e(r["user"])}"><td>{_e(r["user"])}</td>'
            + "".join(f"<td>{r[u]:,.0f}</td>" for u in UNITS)
            + "</tr>"
            for r in df.iter_rows(named=True)
        )
        head = "".join(f"<th>{_e(label)}</th>" for label in UNITS.values())
        body = (
            f"<table><tr><th>Student</th>{head}</tr>"
            f"{rows or '<tr><td colspan=4>No AI use this week.</td></tr>'}</table>"
        )
    return (
        '<div class="oco oco-card" data-testid="cohort-usage"><h2>AI use this week</h2>'
        f"{body}</div>"
    )


class CohortPanel(pn.viewable.Viewer):
    """A cohort's assignments and usage, and the nbgrader steps its user may take."""

    cohort = param.String(default="", doc="The cohort shown.")
    course = param.Dict(default=None, allow_None=True, doc="The last answer for the cohort.")
    error = param.String(default="", doc="Why the last action failed; empty when it succeeded.")

    def __init__(self, client: CohortClient, **params: Any) -> None:
        super().__init__(**params)
        self._client = client
        self._state = pn.pane.HTML(self._marker("loading"), sizing_mode="stretch_width")
        self._select = pn.widgets.Select(name="Cohort", options=[], width=220)
        self._select.param.watch(self._on_cohort, "value")
        self._name = pn.widgets.TextInput(
            name="Assignment", value="", width=200, css_classes=["cohort-assignment"]
        )
        self._buttons = pn.Row()
        self._message = pn.pane.HTML("", stylesheets=[CSS], sizing_mode="stretch_width")
        self._notice = pn.pane.HTML("", stylesheets=[CSS], sizing_mode="stretch_width")
        self._assignments = pn.pane.HTML("", stylesheets=[CSS], sizing_mode="stretch_width")
        self._scores = pn.pane.HTML("", stylesheets=[CSS], sizing_mode="stretch_width")
        self._roster = pn.pane.HTML("", stylesheets=[CSS], sizing_mode="stretch_width")
        self._usage = pn.pane.HTML("", stylesheets=[CSS], sizing_mode="stretch_width")
        self._chart = pn.Column(sizing_mode="stretch_width")
        self._policy: dict[str, Any] = {}
        self._ai = pn.widgets.Checkbox(name="AI on", value=True, css_classes=["cohort-policy-ai"])
        self._models = pn.widgets.TextInput(
            name="Models allowed (comma-separated; empty: all)",
            value="",
            width=300,
            css_classes=["cohort-policy-models"],
        )
        self._tokens = pn.widgets.TextInput(
            name="Tokens per student a day (empty: no limit)",
            value="",
            width=260,
            css_classes=["cohort-policy-tokens"],
        )
        save = pn.widgets.Button(
            name="Save policy", button_type="primary", css_classes=["cohort-policy-save"]
        )
        save.on_click(self._on_save_policy)
        self._minutes = pn.widgets.IntInput(
            name="Exam minutes", value=60, start=1, width=120, css_classes=["cohort-exam-minutes"]
        )
        exam_start = pn.widgets.Button(
            name="Start exam window now", button_type="warning", css_classes=["cohort-exam-start"]
        )
        exam_start.on_click(self._on_exam_start)
        exam_end = pn.widgets.Button(name="End exam window now", css_classes=["cohort-exam-end"])
        exam_end.on_click(self._on_exam_end)
        self._policy_message = pn.pane.HTML("", stylesheets=[CSS], sizing_mode="stretch_width")
        self._editor = pn.Column(
            pn.pane.HTML(
                '<div class="oco"><h2 style="font:600 12px system-ui;color:#616e7c;'
                'letter-spacing:.06em;text-transform:uppercase;margin:0">Set the AI policy</h2>'
                "</div>"
            ),
            pn.Row(self._ai, self._models, self._tokens, save, align="end"),
            pn.Row(self._minutes, exam_start, exam_end, align="end"),
            self._policy_message,
            visible=False,
            sizing_mode="stretch_width",
            css_classes=["cohort-policy-editor"],
        )
        refresh = pn.widgets.Button(name="Refresh", button_type="primary", width=100)
        refresh.on_click(self._on_refresh)
        self._layout = pn.Column(
            pn.Row(
                pn.pane.HTML(
                    '<h1 style="margin:0;font:600 24px system-ui,sans-serif;color:#1f2933">'
                    "Cohort</h1>"
                ),
                pn.HSpacer(),
                self._select,
                refresh,
                align="center",
                sizing_mode="stretch_width",
            ),
            self._notice,
            self._state,
            pn.Row(self._name, self._buttons, align="end"),
            self._message,
            self._roster,
            self._editor,
            self._assignments,
            self._scores,
            self._usage,
            self._chart,
            sizing_mode="stretch_width",
            styles={"max-width": "1100px", "margin": "0 auto", "padding": "24px"},
        )

    def _marker(self, state: str, message: str = "") -> str:
        inner = f'<div class="oco-error">{_e(message)}</div>' if message else ""
        cohort = f' data-cohort="{_e(self.cohort)}"' if state == "ready" else ""
        return (
            f'<div class="oco" data-testid="{TEST_ID}" data-state="{state}"{cohort}>{inner}</div>'
        )

    def _say(self, text: str, ok: bool) -> None:
        self._message.object = (
            f'<div class="oco" data-testid="cohort-message" data-ok="{str(ok).lower()}">'
            f'<p class="{"oco-ok" if ok else "oco-error"}">{_e(text)}</p></div>'
        )

    async def start_up(self) -> None:
        try:
            answer = await self._client.cohorts()
        except ServerAPIError as e:
            self._state.object = self._marker("error", str(e))
            return
        stale = answer.get("restart_needed") or []
        cohorts = [c for c in answer.get("cohorts") or [] if c not in stale]
        self._notice.object = render_notice(stale, answer.get("notice") or "")
        wanted = pn.state.session_args.get("cohort") if pn.state.curdoc else None
        first = wanted[0].decode() if wanted else (cohorts[0] if cohorts else "")
        self._select.options = cohorts
        if not cohorts:
            self._state.object = self._marker("error", "You belong to no cohort.")
            return
        self._select.value = first if first in cohorts else cohorts[0]
        if self.cohort != self._select.value:
            self.cohort = self._select.value
        await self.refresh()

    async def refresh(self) -> None:
        if not self.cohort:
            return
        try:
            course = await self._client.course(self.cohort)
        except ServerAPIError as e:
            self.error = str(e)
            self._state.object = self._marker("error", self.error)
            return
        self.course = course
        steps = INSTRUCTOR_STEPS if course.get("instructor") else STUDENT_STEPS
        buttons = []
        for step, label in steps.items():
            b = pn.widgets.Button(name=label, css_classes=[f"cohort-{step}"], width=170)
            b.on_click(self._runner(step))
            buttons.append(b)
        self._buttons.objects = buttons
        if not self._name.value and course.get("assignments"):
            self._name.value = course["assignments"][0]["name"]
        self._assignments.object = render_assignments(course)
        self._scores.object = render_scores(course)
        if course.get("instructor"):
            try:
                roster = await self._client.roster(self.cohort)
                self._roster.object = render_roster(roster)
                self._show_policy(roster.get("policy") or {})
            except ServerAPIError as e:
                self._roster.object = render_roster({}, str(e))
                self._editor.visible = False
            try:
                df = usage_frame((await self._client.usage(self.cohort)).get("summary") or {})
                self._usage.object = render_usage(df)
                self._chart.objects = [pn.pane.Bokeh(usage_chart(df), sizing_mode="stretch_width")]
            except ServerAPIError as e:
                self._usage.object = render_usage(pl.DataFrame(), str(e))
                self._chart.objects = []
        self._state.object = self._marker("ready")

    def _runner(self, step: str) -> Any:
        async def run(event: Any) -> None:
            await self._run(step)

        return run

    async def _run(self, step: str) -> None:
        name = (self._name.value or "").strip()
        if not name:
            self._say("Name the assignment first.", False)
            return
        self._state.object = self._marker("busy")
        try:
            if step == "collect":
                await self._client.step(self.cohort, name, "collect")
                await self._client.step(self.cohort, name, "autograde")
                done = f"Collected and autograded {name}."
            else:
                result = await self._client.step(self.cohort, name, step)
                done = (
                    f"{STUDENT_STEPS.get(step) or INSTRUCTOR_STEPS[step]}: done ({result['path']})."
                )
        except ServerAPIError as e:
            self._say(str(e), False)
            await self.refresh()
            return
        self._say(done, True)
        await self.refresh()

    def _show_policy(self, policy: dict[str, Any]) -> None:
        self._policy = dict(policy)
        self._ai.value = bool(policy.get("ai", True))
        self._models.value = ", ".join(policy.get("models") or [])
        limit = policy.get("tokens_per_day")
        self._tokens.value = "" if limit is None else str(limit)
        self._editor.visible = True

    def _say_policy(self, text: str, ok: bool) -> None:
        self._policy_message.object = (
            f'<div class="oco" data-testid="cohort-policy-message" data-ok="{str(ok).lower()}">'
            f'<p class="{"oco-ok" if ok else "oco-error"}">{_e(text)}</p></div>'
        )

    async def put_policy(self, policy: dict[str, Any], done: str) -> bool:
        """Send ``policy`` to the hub (through the server); say what happened in the editor."""
        try:
            await self._client.set_policy(self.cohort, policy)
        except ServerAPIError as e:
            self._say_policy(str(e), False)
            return False
        await self.refresh()
        self._say_policy(done, True)
        return True

    async def _on_save_policy(self, event: Any) -> None:
        policy = edited_policy(
            self._policy, self._ai.value, self._models.value or "", self._tokens.value or ""
        )
        await self.put_policy(policy, "Policy saved.")

    async def _on_exam_start(self, event: Any) -> None:
        minutes = int(self._minutes.value or 0)
        if minutes < 1:
            self._say_policy("An exam window lasts at least a minute.", False)
            return
        await self.put_policy(
            with_exam_now(self._policy, minutes), f"Exam window started for {minutes} min."
        )

    async def _on_exam_end(self, event: Any) -> None:
        await self.put_policy(without_current_exam(self._policy), "Exam window ended.")

    async def _on_cohort(self, event: Any) -> None:
        if event.new and event.new != self.cohort:
            self.cohort = event.new
            self._name.value = ""
            await self.refresh()

    async def _on_refresh(self, event: Any) -> None:
        await self.refresh()

    def start(self) -> None:
        pn.state.onload(self.start_up)

    def __panel__(self) -> pn.viewable.Viewable:
        return self._layout


def create_app() -> CohortPanel:
    """The Cohort page for the server's user."""
    if pn.state.curdoc is not None:
        rel = pn.state.rel_path or "."
        pn.state.curdoc.template_variables["app_favicon"] = f"{rel}/oraculo/cohort.svg"
    panel = CohortPanel(CohortClient.from_environment())
    panel.start()
    return panel
