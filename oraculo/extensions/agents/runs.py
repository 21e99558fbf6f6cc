"""A run's state and its event log: every run is a list of typed events, kept as JSON lines.

The state of a run (whose turn it is, each agent's transcript, steps and tokens spent) is derived
from its events only, by :meth:`RunState.apply`; the orchestrator appends events and the same
function rebuilds the state after a server restart, so a run resumes where its log ends.

Events (``type``):

- ``run_started``: ``goal``, ``agents`` (the agent specs as they were when the run started, so a
  resumed run uses the same versions), ``stages`` (the run's graph: a list of stages, each a list
  of agent names; a stage of several is a fan-out whose agents run in parallel), ``owner``,
  ``bounds``, ``session``;
- ``fan_out``: ``from`` (the agents whose answers the branches get) and ``to`` (the parallel
  branches), before their ``input`` messages;
- ``step_started``: ``agent`` and ``step``: the agent's model call began (so a step's tool calls
  and the branches' overlap can be seen as they happen);
- ``agent_finished``: ``agent`` and its ``answer`` (a branch of a fan-out, or one agent of the
  chain, is done);
- ``message``: a typed message ``from`` → ``to`` with ``content``; ``kind`` ``input`` (the goal or
  the previous agent's answer, to an agent), ``reply`` (an agent's model reply, with
  ``tool_calls`` in OpenAI's shape, ``tokens`` and ``seconds``) or ``note`` (a message sent to
  a running agent, ``POST runs/{id}/messages``: the agent reads it at its next step; sent while
  its tool calls are going, it waits until their results are in, so the transcript stays valid);
- ``tool_call_delta``: ``agent``, ``step``, ``index``, ``call_id``, ``tool`` and ``arguments`` (the
  text so far): the model is writing a tool call (its reply streams; sent when the call's name is
  written, then at most every :data:`DELTA_EVERY` seconds while its arguments come), so a call
  shows before the model's reply is whole;
- ``tool_call``: ``agent``, ``call_id``, ``tool``, ``arguments`` and the ``code`` run in the kernel,
  emitted when the call starts (one event per call, as the model makes it);
- ``tool_result``: ``agent``, ``call_id``, ``tool``, ``content``, ``output``, ``error``,
  ``execution_id``, ``seconds``;
- ``resumed``: the server restarted and picked the run up again;
- ``shared``: the runner shared the run with a group (``path``: the copy of its events in the
  group folder's ``runs/``, kept up to date while it goes);
- ``run_finished``: ``status`` (succeeded, failed, cancelled, bounded), ``reason``, ``answer``.
"""

from __future__ import annotations

import datetime as dt
import json
import os
import time
from collections.abc import AsyncIterable, Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from oraculo.extensions.agents.models import AgentMessage, AgentSpec

FINISHED = ("succeeded", "failed", "cancelled", "bounded")


def now_iso() -> str:
    return dt.datetime.now(dt.UTC).isoformat(timespec="milliseconds")


@dataclass
class AgentStats:
    steps: int = 0
    tokens: int = 0
    seconds: float = 0.0
    tool_calls: int = 0
    tool_errors: int = 0


@dataclass
class RunState:
    """Everything known about one run, rebuilt from its events."""

    id: str
    owner: str = ""
    goal: str = ""
    specs: list[AgentSpec] = field(default_factory=list)
    bounds: dict[str, Any] = field(default_factory=dict)
    session: str | None = None
    status: str = "running"
    reason: str = ""
    answer: str = ""
    started: float = 0.0  # unix time
    finished: float | None = None
    current: int = 0  # index of the agent whose turn it is
    stages: list[list[str]] = field(default_factory=list)  # the run's graph, in order
    stage: int = 0  # index of the stage going
    working: list[str] = field(default_factory=list)  # agents given their input, not finished
    given: list[str] = field(default_factory=list)  # agents given their input
    answers: dict[str, str] = field(default_factory=dict)  # agent → its answer, once finished
    calling: dict[str, dict[str, str]] = field(default_factory=dict)  # tool calls going
    steps: int = 0
    tokens: int = 0
    transcripts: dict[str, list[dict[str, Any]]] = field(default_factory=dict)
    pending_calls: dict[str, dict[str, Any]] = field(default_factory=dict)  # call_id → call
    inbox: dict[str, list[dict[str, Any]]] = field(default_factory=dict)  # notes held back
    shared_to: list[str] = field(default_factory=list)  # copies of the log in group folders
    stats: dict[str, AgentStats] = field(default_factory=dict)
    events: list[dict[str, Any]] = field(default_factory=list)

    @property
    def done(self) -> bool:
        return self.status in FINISHED

    @property
    def names(self) -> list[str]:
        return [s.name for s in self.specs]

    def apply(self, event: dict[str, Any]) -> None:
        """Fold one event into the state (live, or replaying a log)."""
        self.events.append(event)
        kind = event["type"]
        if kind == "run_started":
            self.owner = event["owner"]
            self.goal = event["goal"]
            self.specs = [AgentSpec.model_validate(a) for a in event["agents"]]
            self.bounds = event["bounds"]
            self.session = event.get("session")
            self.started = event["unix"]
            self.transcripts = {s.name: [] for s in self.specs}
            self.stats = {s.name: AgentStats() for s in self.specs}
            self.stages = event.get("stages") or [[n] for n in self.names]
        elif kind == "message" and event.get("kind") == "input":
            to = event["to"]
            self.current = self.names.index(to)
            self.stage = next(i for i, s in enumerate(self.stages) if to in s)
            if to not in self.working:
                self.working.append(to)
            if to not in self.given:
                self.given.append(to)
            self.transcripts[to].append({"role": "user", "content": event["content"]})
        elif kind == "agent_finished":
            self.answers[event["agent"]] = event.get("answer", "")
            if event["agent"] in self.working:
                self.working.remove(event["agent"])
        elif kind == "tool_call":
            self.calling[event["call_id"]] = {"agent": event["agent"], "tool": event["tool"]}
        elif kind == "message" and event.get("kind") == "note":
            to = event["to"]
            note = {"role": "user", "content": f"Message from {event['from']}: {event['content']}"}
            if any(c["agent"] == to for c in self.pending_calls.values()):
                self.inbox.setdefault(to, []).append(note)
            else:
                self.transcripts[to].append(note)
        elif kind == "message" and event.get("kind") == "reply":
            sender = event["from"]
            msg: dict[str, Any] = {"role": "assistant", "content": event.get("content")}
            if event.get("tool_calls"):
                msg["tool_calls"] = event["tool_calls"]
                for call in event["tool_calls"]:
                    self.pending_calls[call["id"]] = {"agent": sender, **call}
            self.transcripts[sender].append(msg)
            st = self.stats[sender]
            st.steps += 1
            st.tokens += event.get("tokens", 0)
            st.seconds += event.get("seconds", 0.0)
            self.steps += 1
            self.tokens += event.get("tokens", 0)
        elif kind == "tool_result":
            self.pending_calls.pop(event["call_id"], None)
            self.calling.pop(event["call_id"], None)
            agent = event["agent"]
            self.transcripts[agent].append(
                {"role": "tool", "tool_call_id": event["call_id"], "content": event["content"]}
            )
            if not any(c["agent"] == agent for c in self.pending_calls.values()):
                self.transcripts[agent].extend(self.inbox.pop(agent, []))
            st = self.stats[agent]
            st.tool_calls += 1
            st.tool_errors += 1 if event.get("error") else 0
            st.seconds += event.get("seconds", 0.0)
        elif kind == "shared":
            if event["path"] not in self.shared_to:
                self.shared_to.append(event["path"])
        elif kind == "run_finished":
            self.status = event["status"]
            self.reason = event.get("reason", "")
            self.answer = event.get("answer", "")
            self.finished = event["unix"]

    def summary(self) -> dict[str, Any]:
        going = not self.done
        return {
            "id": self.id,
            "owner": self.owner,
            "goal": self.goal,
            "agents": self.names,
            "status": self.status,
            "reason": self.reason,
            "answer": self.answer,
            "started": self.started,
            "finished": self.finished,
            "steps": self.steps,
            "tokens": self.tokens,
            "bounds": self.bounds,
            "session": self.session,  # the notebook whose kernel the tools run in
            "current": (self.working[0] if self.working else self.names[self.current])
            if self.specs and going
            else None,
            "stages": self.stages,
            "stage": self.stage,
            "working": list(self.working) if going else [],
            "finished_agents": list(self.answers),
            # the tool calls going now: agent → tool
            "calling": {c["agent"]: c["tool"] for c in self.calling.values()} if going else {},
            # the agent whose turn it was when the run stopped short (bounded, failed, cancelled)
            "stopped_at": self.names[self.current]
            if self.specs and self.done and self.status != "succeeded"
            else None,
            # every agent that was working when the run stopped short (all branches of a fan-out)
            "stopped": list(self.working) if self.done and self.status != "succeeded" else [],
            "tool_errors": sum(s.tool_errors for s in self.stats.values()),
            "digests": {s.name: s.sha256 for s in self.specs},
            "shared_to": self.shared_to,
            "per_agent": {k: vars(v) for k, v in self.stats.items()},
            "events": len(self.events),
        }


def messages(state: RunState) -> list[dict[str, Any]]:
    """The run's messages between the user, the agents and their tools, in order."""
    out: list[AgentMessage] = []
    for ev in state.events:
        if ev["type"] == "message":
            out.append(
                AgentMessage(
                    seq=ev["seq"],
                    time=ev["time"],
                    kind=ev["kind"],
                    sender=ev["from"],
                    to=ev["to"],
                    content=ev.get("content"),
                    tool_calls=ev.get("tool_calls") or [],
                )
            )
        elif ev["type"] == "tool_result":
            out.append(
                AgentMessage(
                    seq=ev["seq"],
                    time=ev["time"],
                    kind="tool",
                    sender=f"tool:{ev['tool']}",
                    to=ev["agent"],
                    content=ev["content"],
                    tool_call_id=ev["call_id"],
                    error=ev.get("error"),
                )
            )
    return [m.model_dump(by_alias=True) for m in out]


class EventLog:
    """One run's events as JSON lines in ``<folder>/<run id>.jsonl`` (append, fsync'd)."""

    def __init__(self, folder: Path, run_id: str) -> None:
        self.path = folder / f"{run_id}.jsonl"

    def append(self, event: dict[str, Any]) -> None:
        line = json.dumps(event, ensure_ascii=False, separators=(",", ":")) + "\n"
        fd = os.open(self.path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
        try:
            os.write(fd, line.encode("utf-8"))
            os.fsync(fd)
        finally:
            os.close(fd)

    def read(self) -> list[dict[str, Any]]:
        events = []
        with open(self.path, encoding="utf-8") as f:
            for line in f:
                try:
                    events.append(json.loads(line))
                except json.JSONDecodeError:
                    break  # a line cut short by a crash: the log ends before it
        return events


def make_event(state: RunState, event_type: str, /, **fields: Any) -> dict[str, Any]:
    return {
        "seq": len(state.events),
        "type": event_type,
        "time": now_iso(),
        "unix": time.time(),
        **fields,
    }


def export_notebook(state: RunState) -> dict[str, Any]:
    """A finished (or running) run as a notebook: messages as markdown, tool calls as code cells
    with their outputs."""
    import nbformat
    from nbformat import v4

    cells = [
        v4.new_markdown_cell(
            f"# Agent run `{state.id}`\n\n**Goal:** {state.goal}\n\n"
            f"Agents: {', '.join(state.names)} · status **{state.status}** · "
            f"{state.steps} steps · {state.tokens} tokens"
        )
    ]
    calls: dict[str, Any] = {}
    for ev in state.events:
        if ev["type"] == "message":
            body = ev.get("content") or ""
            for call in ev.get("tool_calls") or []:
                fn = call["function"]
                body += f"\n\n→ calls `{fn['name']}({fn['arguments']})`"
            cells.append(v4.new_markdown_cell(f"**{ev['from']} → {ev['to']}**\n\n{body}"))
        elif ev["type"] == "fan_out":
            branches = " ∥ ".join(ev["to"])
            cells.append(v4.new_markdown_cell(f"**{ev['from']} → in parallel: {branches}**"))
        elif ev["type"] == "tool_call":
            cell = v4.new_code_cell(ev["code"], metadata={"oraculo": {"agent": ev["agent"]}})
            calls[ev["call_id"]] = cell
            cells.append(cell)
        elif ev["type"] == "tool_result" and ev["call_id"] in calls:
            cell = calls[ev["call_id"]]
            if ev.get("output"):
                cell.outputs.append(v4.new_output("stream", name="stdout", text=ev["output"]))
            if ev.get("error"):
                err = ev["error"]
                cell.outputs.append(
                    v4.new_output(
                        "error",
                        ename=err.get("name", "Error"),
                        evalue=err.get("value", ""),
                        traceback=err.get("traceback", []),
                    )
                )
        elif ev["type"] == "run_finished":
            cells.append(
                v4.new_markdown_cell(
                    f"**Run {ev['status']}** {ev.get('reason', '')}\n\n{ev.get('answer', '')}"
                )
            )
    nb = v4.new_notebook(cells=cells, metadata={"oraculo": {"run": state.summary()}})
    nbformat.validate(nb)
    return dict(nb)


#: Seconds between two ``tool_call_delta`` events of one call while its arguments stream.
DELTA_EVERY = 0.25


async def follow_tool_calls(
    chunks: AsyncIterable[dict[str, Any]],
    emit: Callable[..., Awaitable[Any]],
    agent: str,
    step: int,
) -> tuple[dict[str, Any], dict[str, Any]]:
    """Read a streamed completion into the assistant message (OpenAI's shape) and its usage,
    emitting ``tool_call_delta`` as each tool call is written (see the module)."""
    content: list[str] = []
    calls: dict[int, dict[str, Any]] = {}
    sent: dict[int, tuple[float, str]] = {}  # index: (when, arguments) of its last event
    usage: dict[str, Any] = {}

    async def tell(i: int, force: bool) -> None:
        call = calls[i]
        args = call["function"]["arguments"]
        last = sent.get(i)
        if last is not None and (
            last[1] == args or (not force and time.monotonic() - last[0] < DELTA_EVERY)
        ):
            return
        sent[i] = (time.monotonic(), args)
        await emit(
            "tool_call_delta",
            agent=agent,
            step=step,
            index=i,
            call_id=call["id"],
            tool=call["function"]["name"],
            arguments=args,
        )

    async for chunk in chunks:
        usage = chunk.get("usage") or usage
        for choice in chunk.get("choices") or []:
            delta = choice.get("delta") or {}
            if delta.get("content"):
                content.append(delta["content"])
            for d in delta.get("tool_calls") or []:
                i = int(d.get("index", 0))
                fn = d.get("function") or {}
                call = calls.setdefault(
                    i,
                    {"id": "", "type": "function", "function": {"name": "", "arguments": ""}},
                )
                call["id"] = d.get("id") or call["id"]
                call["function"]["name"] = fn.get("name") or call["function"]["name"]
                call["function"]["arguments"] += fn.get("arguments") or ""
                await tell(i, i not in sent)
    for i in sorted(calls):
        await tell(i, True)  # the call as written whole
    message: dict[str, Any] = {"role": "assistant", "content": "".join(content) or None}
    if calls:
        message["tool_calls"] = [calls[i] for i in sorted(calls)]
    return message, usage
