"""The Backstage panel: a live view of agent runs.

Pick a run (or start one: a goal and a chain of agents from the catalogue) and watch it: the
run's graph, its agents as nodes (waiting, working, calling a tool, done) with their steps,
tokens, tool calls and time, a fan-out's parallel branches side by side; the messages between
them, each model step and each tool call's code and output as they happen; a finished run can be
downloaded as a notebook. A run a teammate shared is read-only: Cancel, Send and Share are
hidden. Like the other panels it is a client of the server's public API
(``api/v1/agents``), reached with ``ORACULO_SERVER_URL``/``_TOKEN``/``_SOCKET``.

A run's outcome is said in words and colour (``backstage-outcome``: succeeded, stopped at a
bound, failed, cancelled, with the reason and the number of failed tool calls). A shared agent's
first run (or its first after a change) shows the code to approve and its digest; "Approve"
starts the run with that digest. The catalogue is read again every few seconds, so a notebook
added to ~/agents appears by itself; an empty one says where agents come from.

Test hooks: ``data-testid`` ``oraculo-backstage`` (root; ``data-state`` = the shown run's status, or
``idle``/``error``), ``backstage-node`` (``data-agent``, ``data-status``), ``backstage-event``
(``data-type``), ``backstage-message``, ``backstage-outcome`` (``data-outcome``),
``backstage-empty``, ``backstage-note``, ``backstage-parallel`` (a fan-out's branches,
``data-agents``), ``backstage-calling`` (the tool a node is calling), ``backstage-approval``
(``backstage-approval-agent`` with ``data-digest``); events carry ``data-kind`` (a message's kind:
``note`` for one sent to the running agent with Send); widgets carry CSS classes
``oraculo-backstage-{runs,goal,agents,start,cancel,export,approve,say,send,kernel}``;
``backstage-session`` says which notebook's kernel the shown run's tools used.

"Tools run in" binds a new run to one of the user's open notebooks (``api/v1/chat/notebooks``):
its tools then run in that notebook's kernel (the run's ``session``), so the notebook sees what
they set and they see the notebook's variables.
"""

from __future__ import annotations

import html
import io
import json
from typing import Any, cast

import httpx
import panel as pn
import param

from oraculo.extensions.panels.client import ServerAPIError, ServerClient

TEST_ID = "oraculo-backstage"
#: The kernel choice meaning "no notebook": the tools use the assistant's own kernel.
ASSISTANT_KERNEL = "the assistant's own kernel"

CSS = """
.ob { font-family: system-ui, -apple-system, "Segoe UI", Roboto, sans-serif; color: #1f2933; }
.ob-graph { display: flex; align-items: stretch; gap: 8px; flex-wrap: wrap; margin: 8px 0; }
.ob-node { border: 2px solid #cbd2d9; border-radius: 10px; padding: 8px 12px; min-width: 150px;
           background: #fff; }
.ob-node[data-status=working] { border-color: #1971c2; background: #e7f5ff; }
.ob-node[data-status=done] { border-color: #2b8a3e; background: #ebfbee; }
.ob-node[data-status=calling] { border-color: #e67700; background: #fff9db; }
.ob-parallel { display: flex; flex-direction: column; gap: 6px; border: 2px dashed #7048e8;
               border-radius: 12px; padding: 4px 8px 8px; }
.ob-parallel > .ob-sub { color: #7048e8; font-weight: 600; }
.ob-node b { display: block; font-size: 14px; }
.ob-node span { font-size: 12px; color: #52606d; }
.ob-arrow { align-self: center; color: #9aa5b1; font-size: 20px; }
.ob-ev { border-left: 3px solid #cbd2d9; padding: 4px 10px; margin: 6px 0; font-size: 13px; }
.ob-ev[data-type=tool_call] { border-color: #e67700; }
.ob-ev[data-type=tool_result] { border-color: #2b8a3e; }
.ob-ev[data-type=tool_result][data-error] { border-color: #c92a2a; }
.ob-ev[data-kind=note] { border-color: #7048e8; background: #f3f0ff; }
.ob-ev[data-type=run_finished] { border-color: #1971c2; font-weight: 600; }
.ob-ev[data-type=fan_out] { border-color: #7048e8; }
.ob-ev[data-type=tool_call_delta] { border-color: #ffd8a8; color: #616e7c; padding: 0 10px; }
.ob-ev[data-type=step_started] { border-color: #e9ecef; color: #616e7c; padding: 0 10px; }
.ob-ev pre { background: #f5f7fa; padding: 6px 8px; border-radius: 6px; white-space: pre-wrap;
             margin: 4px 0; font-size: 12px; max-height: 240px; overflow: auto; }
.ob-err { color: #c92a2a; }
.ob-node[data-status=bounded] { border-color: #e67700; background: #fff4e6; }
.ob-node[data-status=failed] { border-color: #c92a2a; background: #fff5f5; }
.ob-node[data-status=cancelled] { border-color: #868e96; background: #f1f3f5; }
.ob-outcome { display: inline-block; border-radius: 6px; padding: 2px 8px; font-weight: 600;
              font-size: 13px; color: #fff; background: #1971c2; }
.ob-outcome[data-outcome=succeeded] { background: #2b8a3e; }
.ob-outcome[data-outcome=bounded] { background: #e67700; }
.ob-outcome[data-outcome=failed] { background: #c92a2a; }
.ob-outcome[data-outcome=cancelled] { background: #868e96; }
.ob-note { background: #fff9db; border: 1px solid #fab005; border-radius: 8px; padding: 8px 12px;
           margin: 6px 0; font-size: 13px; }
.ob-approval { border: 2px solid #e67700; border-radius: 10px; padding: 8px 12px; margin: 6px 0; }
.ob-approval pre { background: #f5f7fa; padding: 6px 8px; border-radius: 6px; font-size: 12px;
                   white-space: pre-wrap; max-height: 320px; overflow: auto; }
.ob-sub { font-size: 12px; color: #616e7c; }
"""


class AgentsAPIError(ServerAPIError):
    """The server answered with an error; ``str()`` is its envelope's message, ``body`` the
    whole answer (an ``approval_required`` one carries the code to review)."""

    def __init__(self, message: str, body: dict[str, Any] | None = None) -> None:
        super().__init__(message)
        self.body = body or {}


class AgentsClient(ServerClient):
    """Calls ``api/v1/agents`` with the server's own credential."""

    path = "api/v1/agents"
    error = AgentsAPIError

    async def request(self, method: str, path: str = "", **kw: Any) -> Any:
        """As :meth:`ServerClient.request`, keeping an error answer's whole body."""
        try:
            async with self.connect() as client:
                r = await client.request(method, self.base + path, **kw)
        except httpx.HTTPError as e:
            raise AgentsAPIError(f"The server did not answer ({type(e).__name__}).") from e
        if r.status_code >= 400:
            try:
                body = r.json()
            except ValueError:
                body = {}
            raise AgentsAPIError(
                self.error_message(r.status_code, r.content), body if isinstance(body, dict) else {}
            )
        return r.json() if r.content else None


def _e(value: Any) -> str:
    return html.escape(str(value), quote=True)


#: A finished run's outcome in words (never a plain "done": a run that stopped at a bound or
#: failed says so, in words and colour).
OUTCOMES = {
    "running": "Running",
    "succeeded": "Succeeded",
    "bounded": "Stopped at a bound",
    "failed": "Failed",
    "cancelled": "Cancelled",
}


def render_outcome(run: dict[str, Any]) -> str:
    """The run's status as a coloured badge in words, with its reason and its tool errors."""
    status = str(run.get("status", ""))
    words = OUTCOMES.get(status, status)
    if run.get("reason"):
        words += f": {run['reason']}"
    errors = int(run.get("tool_errors") or 0)
    if errors:
        words += f" · {errors} tool call{'s' if errors > 1 else ''} failed"
    return (
        f'<span class="ob-outcome" data-testid="backstage-outcome" data-outcome="{_e(status)}">'
        f"{_e(words)}</span>"
    )


def _node_status(run: dict[str, Any], name: str, index: int) -> str:
    """waiting, working, calling (a tool call going), done, or how the run stopped there."""
    if name in (run.get("calling") or {}):
        return "calling"
    if name in (run.get("working") or []):
        return "working"
    if name in (run.get("stopped") or []) or name == run.get("stopped_at"):
        return str(run.get("status"))
    if name in (run.get("finished_agents") or []):
        return "done"
    if name == run.get("current"):
        return "working"
    # a log from before agent_finished: every stage before the one going is done
    going = run.get("stage")
    if going is None:
        where = run.get("current") or run.get("stopped_at")
        stages = run.get("stages") or [[n] for n in run.get("agents", [])]
        going = next((i for i, s in enumerate(stages) if where in s), len(stages))
    return "done" if index < int(going) else "waiting"


def _node(run: dict[str, Any], name: str, index: int) -> str:
    status = _node_status(run, name, index)
    st = run.get("per_agent", {}).get(name, {})
    errors = st.get("tool_errors", 0)
    failed = f' · <span class="ob-err">{errors} failed</span>' if errors else ""
    words = OUTCOMES.get(status, status)
    tool = (run.get("calling") or {}).get(name)
    if tool:
        words = f'calling <code data-testid="backstage-calling">{_e(tool)}</code>'
    else:
        words = _e(words)
    return (
        f'<div class="ob-node" data-testid="backstage-node" data-agent="{_e(name)}" '
        f'data-status="{_e(status)}"><b>{_e(name)}</b>'
        f"<span>{words} · {st.get('steps', 0)} steps · "
        f"{st.get('tokens', 0)} tokens · {st.get('tool_calls', 0)} tool calls{failed} · "
        f"{st.get('seconds', 0.0):.1f} s</span></div>"
    )


def render_graph(run: dict[str, Any]) -> str:
    """The run's graph: its stages in order, a fan-out's branches side by side in a column
    marked "in parallel", each agent a node with what it has spent; a node whose tool call is
    going says which tool; the agent where a run stopped short shows how it stopped (bounded,
    failed, cancelled), never "done"."""
    names: list[str] = run.get("agents", [])
    stages: list[list[str]] = run.get("stages") or [[n] for n in names]
    parts = []
    for index, stage in enumerate(stages):
        nodes = "".join(_node(run, name, index) for name in stage)
        if len(stage) > 1:
            parts.append(
                '<div class="ob-parallel" data-testid="backstage-parallel" '
                f'data-agents="{_e(",".join(stage))}"><span class="ob-sub">in parallel</span>'
                f"{nodes}</div>"
            )
        else:
            parts.append(nodes)
    return '<div class="ob ob-graph">' + '<div class="ob-arrow">→</div>'.join(parts) + "</div>"


EMPTY_HINT = (
    "No agents yet. An agent is a notebook with <code>metadata.oraculo.agent</code>: its markdown "
    "cells are the instructions and each top-level function a tool. Put one in "
    "<code>~/agents</code> (the examples are copied there at your first start) or in a group's "
    "shared folder, <code>~/shared/&lt;group&gt;</code>. It appears here by itself."
)


def agent_label(agent: dict[str, Any]) -> str:
    """How the catalogue names an agent: who owns it, which version, whether it needs approval."""
    where = (
        "published by" if agent.get("published") else ("shared by" if agent.get("shared") else "")
    )
    label = str(agent["name"])
    if where:
        label += f" ({where} {agent.get('owner', '?')}, {agent.get('version', '')})"
    if agent.get("needs_approval"):
        label += " · needs your approval"
    return label


def render_approval(body: dict[str, Any]) -> str:
    """A 409 ``approval_required``: each shared agent's digest, owner and code to review."""
    parts = []
    for a in body.get("approvals") or []:
        code = "\n\n".join(
            [*(a.get("setup") or []), *(t.get("source", "") for t in a.get("tools") or [])]
        )
        parts.append(
            f'<div data-testid="backstage-approval-agent" data-digest="{_e(a.get("digest"))}">'
            f"<b>{_e(a.get('agent'))}</b> by <b>{_e(a.get('owner'))}</b> · "
            f"{'published release' if a.get('published') else 'working copy'} · "
            f"<code>{_e(a.get('path'))}</code><br>sha256 <code>{_e(a.get('digest'))}</code>"
            f"<pre>{_e(code)}</pre></div>"
        )
    return (
        '<div class="ob ob-approval" data-testid="backstage-approval">'
        "<b>Approve shared code before it runs as you.</b> These tools will run in your kernel, "
        "as your account, on your data. Approve this exact version (a changed notebook asks "
        f"again):{''.join(parts)}</div>"
    )


def render_event(ev: dict[str, Any]) -> str:
    """One event as HTML (every value escaped)."""
    kind = ev.get("type", "")
    extra_attrs = f' data-kind="{_e(ev["kind"])}"' if ev.get("kind") else ""
    if kind == "tool_result" and ev.get("error"):
        extra_attrs += " data-error"
    head = (
        f'<div class="ob ob-ev" data-testid="backstage-event" data-type="{_e(kind)}"{extra_attrs}>'
    )
    when = f'<span class="ob-sub">{_e(ev.get("time", "")[11:19])}</span> '
    if kind == "message":
        body = _e(ev.get("content") or "")
        for call in ev.get("tool_calls") or []:
            fn = call.get("function", {})
            body += f"<br>→ <code>{_e(fn.get('name'))}({_e(fn.get('arguments'))})</code>"
        extra = ""
        if ev.get("tokens") is not None:
            extra = (
                f' <span class="ob-sub">{ev["tokens"]} tokens · {ev.get("seconds", 0):.1f} s</span>'
            )
        return (
            f'{head}{when}<b data-testid="backstage-message">{_e(ev.get("from"))} → '
            f"{_e(ev.get('to'))}</b>{extra}<div>{body}</div></div>"
        )
    if kind == "tool_call_delta":  # the model is writing the call: its arguments so far
        return (
            f"{head}{when}<b>{_e(ev.get('agent'))}</b> writes <code>{_e(ev.get('tool'))}"
            f"({_e(ev.get('arguments', ''))}</code>…</div>"
        )
    if kind == "tool_call":
        return (
            f"{head}{when}<b>{_e(ev.get('agent'))}</b> calls <code>{_e(ev.get('tool'))}</code>"
            f"({_e(json.dumps(ev.get('arguments', {}), ensure_ascii=False))}) in the kernel"
            f"<pre>{_e(ev.get('code', ''))}</pre></div>"
        )
    if kind == "tool_result":
        err = ev.get("error")
        text = ev.get("content", "")
        out = f"<pre>{_e(ev.get('output'))}</pre>" if ev.get("output") else ""
        cls = ' class="ob-err"' if err else ""
        return (
            f"{head}{when}<b>{_e(ev.get('tool'))}</b> → {_e(ev.get('agent'))} "
            f'<span class="ob-sub">{ev.get("seconds", 0):.1f} s</span>{out}'
            f"<div{cls}>{_e(text)}</div></div>"
        )
    if kind == "run_finished":
        return f"{head}{when}{render_outcome(ev)}<div>{_e(ev.get('answer', ''))}</div></div>"
    if kind == "run_started":
        return f"{head}{when}Run started: {_e(ev.get('goal'))}</div>"
    if kind == "fan_out":
        branches = " ∥ ".join(_e(n) for n in ev.get("to") or [])
        return f"{head}{when}<b>{_e(ev.get('from'))}</b> fans out, in parallel: {branches}</div>"
    if kind == "step_started":
        return f"{head}{when}{_e(ev.get('agent'))} thinks (step {_e(ev.get('step'))})…</div>"
    if kind == "agent_finished":
        return (
            f"{head}{when}<b>{_e(ev.get('agent'))}</b> answered: {_e(ev.get('answer', ''))}</div>"
        )
    return f"{head}{when}{_e(kind)}</div>"


class BackstagePanel(pn.viewable.Viewer):
    """Lists runs, starts one, and follows the chosen run live."""

    period = param.Integer(default=1000, bounds=(200, None), doc="Milliseconds between polls.")
    catalogue_period = param.Integer(
        default=3000, bounds=(500, None), doc="Milliseconds between reads of the agent catalogue."
    )
    run_id = param.String(default="", doc="The run shown.")
    status = param.String(default="idle", doc="The shown run's status, idle or error.")

    def __init__(self, client: AgentsClient, **params: Any) -> None:
        super().__init__(**params)
        self._client = client
        self._events: list[dict[str, Any]] = []
        self._shown = ""  # the run whose events the timeline holds
        self._run: dict[str, Any] = {}
        self._follow_latest = True  # until the user picks a run, show the newest one
        self._picking = False
        self.runs = pn.widgets.Select(
            name="Run", options={}, css_classes=["oraculo-backstage-runs"], width=420
        )
        self.runs.param.watch(self._on_pick, "value")
        self.goal = pn.widgets.TextInput(
            name="Goal",
            placeholder="What should the agents do?",
            css_classes=["oraculo-backstage-goal"],
        )
        self.agents = pn.widgets.MultiChoice(
            name="Agents, in order", options=[], css_classes=["oraculo-backstage-agents"]
        )
        # the kernel the run's tools use: the assistant's own, or an open notebook's
        self.notebooks = ServerClient(
            client.base.removesuffix(AgentsClient.path),
            token=client.token,
            unix_socket=client.unix_socket,
        )
        self.kernel = pn.widgets.Select(
            name="Tools run in",
            options={ASSISTANT_KERNEL: ""},
            css_classes=["oraculo-backstage-kernel"],
            width=260,
        )
        self.start_button = pn.widgets.Button(
            name="Start run", button_type="primary", css_classes=["oraculo-backstage-start"]
        )
        self.start_button.on_click(self._on_start)
        self.cancel = pn.widgets.Button(
            name="Cancel", button_type="danger", css_classes=["oraculo-backstage-cancel"]
        )
        self.cancel.on_click(self._on_cancel)
        self.export = pn.widgets.FileDownload(
            callback=self._notebook_bytes,
            filename="run.ipynb",
            label="Export as notebook",
            css_classes=["oraculo-backstage-export"],
            disabled=True,
        )
        self.say = pn.widgets.TextInput(
            placeholder="A message to the running agent (read at its next step)",
            css_classes=["oraculo-backstage-say"],
            width=420,
        )
        self.send = pn.widgets.Button(name="Send", css_classes=["oraculo-backstage-send"])
        self.send.on_click(self._on_send)
        self.approve_button = pn.widgets.Button(
            name="Approve and run",
            button_type="warning",
            css_classes=["oraculo-backstage-approve"],
            visible=False,
        )
        self.approve_button.on_click(self._on_approve)
        self._pending: dict[str, Any] = {}  # the run waiting for approval: request and digests
        self._shared: list[dict[str, Any]] = []  # runs teammates shared with the user's groups
        self.share = pn.widgets.Button(
            name="Share with the team", css_classes=["oraculo-backstage-share"]
        )
        self.share.on_click(self._on_share)
        self.note = pn.pane.HTML("", sizing_mode="stretch_width", stylesheets=[CSS])
        self.approval = pn.pane.HTML("", sizing_mode="stretch_width", stylesheets=[CSS])
        self.header = pn.pane.HTML(self._header(""), sizing_mode="stretch_width", stylesheets=[CSS])
        self.graph = pn.pane.HTML("", sizing_mode="stretch_width", stylesheets=[CSS])
        self.timeline = pn.Column(sizing_mode="stretch_width")

    def _header(self, error: str) -> str:
        state = "error" if error else self.status
        msg = f'<span class="ob-err">{_e(error)}</span>' if error else ""
        summary = ""
        if self._run:
            r = self._run
            summary = (
                f"{render_outcome(r)} {_e(r.get('goal', ''))} · {r.get('steps', 0)} steps · "
                f"{r.get('tokens', 0)} tokens"
            )
            if r.get("session"):
                summary += (
                    ' · <span data-testid="backstage-session">'
                    f"tools ran in notebook {_e(r['session'])}</span>"
                )
            if r.get("shared_by"):
                summary += (
                    ' · <span data-testid="backstage-shared-by">'
                    f"shared by {_e(r['shared_by'])}, read-only</span>"
                )
        return (
            f'<div class="ob" data-testid="{TEST_ID}" data-state="{_e(state)}" '
            f'data-run="{_e(self.run_id)}"><h3 style="margin:0">Backstage</h3>'
            f'<div class="ob-sub">{summary}</div>{msg}</div>'
        )

    async def load_agents(self) -> None:
        """Read the catalogue again: a notebook added to ~/agents appears without a reload."""
        try:
            agents = (await self._client.request("GET"))["agents"]
        except AgentsAPIError as e:
            self.header.object = self._header(str(e))
            return
        options = {agent_label(a): a["name"] for a in agents}
        if options != self.agents.options:
            chosen = [v for v in self.agents.value if v in options.values()]
            self.agents.options = options
            self.agents.value = chosen
        await self.load_notebooks()
        try:
            self._shared = (await self._client.request("GET", "/shared-runs"))["runs"]
        except AgentsAPIError:
            self._shared = []
        hint = (
            ""
            if agents
            else f'<div class="ob ob-note" data-testid="backstage-empty">{EMPTY_HINT}</div>'
        )
        if self.note.object != hint and (
            not self.note.object or "backstage-empty" in str(self.note.object)
        ):
            self.note.object = hint

    def _say(self, text: str, testid: str = "backstage-note") -> None:
        self.note.object = f'<div class="ob ob-note" data-testid="{testid}">{_e(text)}</div>'

    async def load(self) -> None:
        await self.load_agents()
        try:
            runs = await self._client.request("GET", "/runs")
        except AgentsAPIError as e:
            self.header.object = self._header(str(e))
            return
        wanted = pn.state.session_args.get("run", [b""])[0].decode()
        if wanted:
            self._follow_latest = False
            self.run_id = wanted
        self._set_runs(runs["runs"])
        await self.poll()

    def _set_runs(self, runs: list[dict[str, Any]]) -> None:
        options = {f"{r['status']} · {r['goal'][:50]} · {r['id'][:8]}": r["id"] for r in runs}
        own = set(options.values())
        for r in self._shared:  # the team's runs, read-only
            if r["id"] not in own:
                label = (
                    f"shared by {r['shared_by']} · {r['status']} · {r['goal'][:40]} · {r['id'][:8]}"
                )
                options[label] = r["id"]
        self._picking = True
        try:
            self.runs.options = options
            if runs and (self._follow_latest or not self.run_id):
                self.runs.value = runs[0]["id"]
            elif self.run_id in options.values():
                self.runs.value = self.run_id
        finally:
            self._picking = False

    def _on_pick(self, event: Any) -> None:
        if not self._picking:
            self._follow_latest = False
        if event.new and event.new != self.run_id:
            self.run_id = event.new
            self._shown, self._events = "", []
            self.timeline.objects = []
            pn.state.execute(self.poll)

    async def _on_start(self, _: Any) -> None:
        body: dict[str, Any] = {"goal": self.goal.value, "agents": list(self.agents.value)}
        if self.kernel.value:  # bound: the tools run in that notebook's kernel
            body["session"] = self.kernel.value
        await self._start(body)

    async def load_notebooks(self) -> None:
        """The user's open notebooks, for the run's tools to use one's kernel (the choice
        stays while the notebook is open)."""
        try:
            found = (await self.notebooks.request("GET", "api/v1/chat/notebooks"))["notebooks"]
        except (ServerAPIError, KeyError, TypeError):
            found = []  # no chat feature, or the server is busy: the assistant's kernel only
        options = {ASSISTANT_KERNEL: ""}
        for n in found:
            options[f"notebook {n['path']} · {n['state']}"] = n["path"]
        if options != self.kernel.options:
            chosen = self.kernel.value if self.kernel.value in options.values() else ""
            self.kernel.options = options
            self.kernel.value = chosen

    async def _on_approve(self, _: Any) -> None:
        if self._pending:
            body = {**self._pending["request"], "approve": self._pending["digests"]}
            await self._start(body)

    async def _start(self, body: dict[str, Any]) -> None:
        try:
            run = await self._client.request("POST", "/runs", json=body)
            runs = await self._client.request("GET", "/runs")
        except AgentsAPIError as e:
            if e.body.get("type") == "approval_required":
                # show the code to review and the digest; the run starts once approved
                digests = [a["digest"] for a in e.body.get("approvals") or []]
                request = {k: v for k, v in body.items() if k != "approve"}
                self._pending = {"request": request, "digests": digests}
                self.approval.object = render_approval(e.body)
                self.approve_button.name = "Approve " + ", ".join(d[:12] for d in digests)
                self.approve_button.visible = True
                return
            self.header.object = self._header(str(e))
            return
        self._pending = {}
        self.approval.object = ""
        self.approve_button.visible = False
        self.note.object = ""
        await self.load_agents()  # what was approved no longer says it needs approval
        self._follow_latest = True
        self._set_runs([r for r in runs["runs"] if r["id"] == run["id"]] + runs["runs"])

    async def _on_share(self, _: Any) -> None:
        if not self.run_id or self._run.get("shared_by"):
            self._say("Pick one of your runs to share.")
            return
        try:
            run = await self._client.request("POST", f"/runs/{self.run_id}/share", json={})
        except AgentsAPIError as e:
            self._say(str(e))
            return
        self._say("Shared with the team, read-only: " + ", ".join(run.get("shared_to", [])))

    async def _on_send(self, _: Any) -> None:
        if not self.run_id or not self.say.value:
            self._say("Pick a running run and write a message first.")
            return
        try:
            await self._client.request(
                "POST", f"/runs/{self.run_id}/messages", json={"content": self.say.value}
            )
        except AgentsAPIError as e:
            self._say(str(e))
            return
        self.say.value = ""
        self.note.object = ""
        await self.poll()

    async def _on_cancel(self, _: Any) -> None:
        if not self.run_id:
            self._say("No run is shown: nothing to cancel.")
            return
        before = self._run.get("status") if self._run.get("id") == self.run_id else None
        try:
            run = await self._client.request("POST", f"/runs/{self.run_id}/cancel")
        except AgentsAPIError as e:
            self.header.object = self._header(str(e))
            return
        if before not in (None, "running") or run["status"] != "cancelled":
            words = OUTCOMES.get(run["status"], run["status"]).lower()
            self._say(f"This run had already finished ({words}): there is nothing to cancel.")
        else:
            self._say("Run cancelled.")
        await self.poll()

    async def poll(self) -> None:
        """Refresh the list of runs; fetch the shown run and add its new events."""
        try:
            self._set_runs((await self._client.request("GET", "/runs"))["runs"])
        except AgentsAPIError as e:
            self.header.object = self._header(str(e))
            return
        if not self.run_id:
            return
        shared = any(r["id"] == self.run_id for r in self._shared)
        try:
            try:
                run = await self._client.request("GET", f"/runs/{self.run_id}")
            except AgentsAPIError:
                if not shared:
                    raise
                # a teammate's run, read-only
                run = await self._client.request("GET", f"/shared-runs/{self.run_id}")
        except AgentsAPIError as e:
            self.header.object = self._header(str(e))
            return
        if run["id"] != self.run_id:
            return
        events = run.pop("events")
        self._run = run
        self.status = run["status"]
        if self._shown != run["id"]:  # another run than the timeline holds: start it afresh
            self._shown, self._events = run["id"], []
            self.timeline.objects = []
        new = events[len(self._events) :]
        self._events = events
        if new:
            self.timeline.extend(
                [
                    pn.pane.HTML(render_event(ev), sizing_mode="stretch_width", stylesheets=[CSS])
                    for ev in new
                ]
            )
        self.graph.object = render_graph(run)
        self.header.object = self._header("")
        # a teammate's shared run is read-only: only its runner can cancel, message or share it
        own = not run.get("shared_by")
        for widget in (self.cancel, self.say, self.send, self.share):
            if widget.visible != own:
                widget.visible = own
        self.export.disabled = run["status"] == "running"
        self.export.filename = f"run-{self.run_id[:8]}.ipynb"

    def _notebook_bytes(self) -> io.BytesIO:
        # FileDownload's callback is synchronous: read the export with a blocking client
        headers = {"Authorization": f"token {self._client.token}"} if self._client.token else {}
        transport = (
            httpx.HTTPTransport(uds=self._client.unix_socket) if self._client.unix_socket else None
        )
        with httpx.Client(timeout=30, transport=transport, verify=False, trust_env=False) as c:
            r = c.get(f"{self._client.base}/runs/{self.run_id}/notebook", headers=headers)
        return io.BytesIO(r.content if r.status_code == 200 else json.dumps({}).encode())

    def start(self) -> None:
        pn.state.onload(self.load)
        pn.state.add_periodic_callback(cast(Any, self.poll), period=self.period)
        pn.state.add_periodic_callback(cast(Any, self.load_agents), period=self.catalogue_period)

    def __panel__(self) -> pn.viewable.Viewable:
        controls = pn.Row(
            self.goal, self.agents, self.kernel, self.start_button, sizing_mode="stretch_width"
        )
        return pn.Column(
            self.header,
            self.note,
            controls,
            self.approval,
            self.approve_button,
            pn.Row(self.runs, self.cancel, self.export, self.share),
            pn.Row(self.say, self.send),
            self.graph,
            self.timeline,
            sizing_mode="stretch_width",
        )


def create_app() -> BackstagePanel:
    """The Backstage page, talking to the server that started this process."""
    if pn.state.curdoc is not None:
        rel = pn.state.rel_path or "."
        pn.state.curdoc.template_variables["app_favicon"] = f"{rel}/oraculo/workspace.svg"
    panel = BackstagePanel(AgentsClient.from_environment())
    panel.start()
    return panel
