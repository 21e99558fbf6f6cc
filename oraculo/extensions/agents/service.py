"""The agents service: the catalogue of agent notebooks, and runs of a goal with agents.

A run is a graph of agents in stages (planner → workers → reviewer, in the order the request lists
them, then the ``handoff`` each last agent's notebook declares): the first gets the goal, each next
one the goal and its predecessor's answer, and the last one's answer is the run's. An agent whose
notebook declares ``fan_out`` (a list of agents) hands its answer to all of them at once: they run
in parallel (their model calls side by side; their tool calls queue for the one kernel) and their
answers, gathered, go to the declaring agent's ``handoff`` (or are the run's answer).

Each agent works in steps; a step is one call to the model service with the agent's tools plus
``final_answer`` and ``tool_choice: "required"`` (so, with the model service's constrained decoding,
every step is a valid tool call, even from the bundled 135M model). A tool call runs in the user's
sandbox kernel through the execute service (origin ``agent:<name>@<sha256 of its notebook>``): the
tool's definition is executed first, then the function is called with the JSON arguments, so the
call shares state with the notebook, obeys the kernel's limits and is audited. ``final_answer``
hands over to the next agent.

A shared agent (from a group folder) runs only once the runner approved its exact digest
(:mod:`oraculo.extensions.agents.trust`): ``start`` answers 409 ``approval_required`` with the
code to review otherwise. Members publish releases to the group's ``published/`` folder.

Runs are bounded (steps, tokens, wall clock: the run's bounds, each agent's own ``max_steps``),
can be cancelled, and are event-sourced (:mod:`oraculo.extensions.agents.runs`) under
``~/.oraculo/agents/runs/``: a run that was going when the server stopped resumes when it starts.
Finished runs' logs are pruned by age (``runs_max_age_days``) and total size
(``runs_max_bytes``, oldest first) at start and after each run.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import hashlib
import json
import os
import re
import shutil
import time
import uuid
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

from traitlets import Float, Int, List, Unicode, default
from traitlets.config import LoggingConfigurable

from oraculo.extensions.agents.models import AgentSpec, RunRequest, ToolSpec
from oraculo.extensions.agents.notebook import scan
from oraculo.extensions.agents.runs import (
    EventLog,
    RunState,
    export_notebook,
    follow_tool_calls,
    make_event,
    messages,
)
from oraculo.extensions.agents.trust import (
    PUBLISHED,
    SHARED_RUNS,
    ApprovalRequired,
    Approvals,
    append_shared_run,
    hub_owner,
    os_user_prefix,
    publish_copy,
    read_file,
    replace_through_hub,
    trusted_folder,
    write_shared_run,
)
from oraculo.extensions.base.errors import (
    BadRequest,
    Conflict,
    Forbidden,
    NotFound,
    OraculoError,
)
from oraculo.extensions.base.modelclient import ModelClient

FINAL = "final_answer"
ANSWER_CHARS = 400


class _Stop(Exception):
    def __init__(self, status: str, reason: str) -> None:
        super().__init__(reason)
        self.status, self.reason = status, reason


class _Run:
    """A live run: its state, its log, its task and whoever follows its events."""

    def _mirror(self, event: dict[str, Any]) -> None:
        """The event, appended to the copies shared with groups too (best effort)."""
        line = json.dumps(event, ensure_ascii=False, separators=(",", ":")) + "\n"
        for path in self.state.shared_to:
            with contextlib.suppress(OSError):
                append_shared_run(Path(path), line)

    def __init__(self, state: RunState, log: EventLog) -> None:
        self.state = state
        self.log = log
        self.task: asyncio.Task[None] | None = None
        self.changed = asyncio.Condition()
        self.cancel_requested = False
        # parallel branches and messages emit side by side: one event at a time gets its seq
        self._emitting = asyncio.Lock()

    async def emit(self, event_type: str, /, **fields: Any) -> dict[str, Any]:
        async with self._emitting:
            event = make_event(self.state, event_type, **fields)
            await asyncio.to_thread(self.log.append, event)
            self.state.apply(event)
            if self.state.shared_to:
                await asyncio.to_thread(self._mirror, event)
        async with self.changed:
            self.changed.notify_all()
        return event


class AgentsService(LoggingConfigurable):
    """Catalogue and runs for this server's user."""

    agents_dir = Unicode(
        "agents",
        config=True,
        help="Folder (under the server's root) searched first for the user's agent notebooks.",
    )
    search_dirs = List(
        Unicode(),
        [""],
        config=True,
        help="""More folders under the server's root whose notebooks with metadata.oraculo.agent
        are the user's agents ("" = the whole root, three levels down).""",
    )
    shared_dirs = List(
        Unicode(),
        config=True,
        help="""Shared folders (absolute) of the user's groups, whose agent notebooks the user may
        run. Default: the folders in ORACULO_SHARED_AGENT_DIRS, then those in
        ORACULO_SHARED_DIRS (the hub's group folders); both os.pathsep-separated.""",
    )
    runs_dir = Unicode(
        config=True, help="Where run logs are kept. Default: ~/.oraculo/agents/runs."
    )
    owner_prefix = Unicode(
        config=True,
        help="""Prefix of the OS accounts the hub makes for its users (jupyter- in
        system-users mode): a file owned by jupyter-ana is ana's. Default
        ORACULO_OS_USER_PREFIX, else read from this server's own account name.""",
    )
    approvals_path = Unicode(
        config=True,
        help="The user's approved agent digests. Default: ~/.oraculo/agents/approvals.json.",
    )
    default_max_steps = Int(12, config=True, help="Steps a run may take when it names no bound.")
    default_max_tokens = Int(
        20_000, config=True, help="Model tokens a run may spend when it names no bound."
    )
    default_timeout = Float(
        600.0, config=True, help="Seconds of wall clock a run may take when it names no bound."
    )
    reply_max_tokens = Int(160, config=True, help="max_tokens of one agent step's model call.")
    max_active_runs = Int(4, config=True, help="Runs going at once; more are refused (409).")
    max_agents = Int(
        12, config=True, help="Agents a run may involve, its declared handoffs and fan-outs too."
    )
    runs_max_age_days = Float(
        30.0,
        config=True,
        help="""Logs of finished runs older than this many days (by their last event) are
        deleted, at start and after each run. 0 keeps them whatever their age. A run still
        going is never pruned.""",
    )
    runs_max_bytes = Int(
        200 * 1024 * 1024,
        config=True,
        help="""Most bytes the logs of finished runs may take together; past it the oldest are
        deleted (at start and after each run) until they fit. 0: no size bound. The logs of
        runs still going count but are never deleted.""",
    )

    @default("shared_dirs")
    def _default_shared_dirs(self) -> list[str]:
        folders: list[str] = []
        for name in ("ORACULO_SHARED_AGENT_DIRS", "ORACULO_SHARED_DIRS"):
            for folder in os.environ.get(name, "").split(os.pathsep):
                if folder and folder not in folders:
                    folders.append(folder)
        return folders

    examples_dir = Unicode(
        config=True,
        help="""Folder of example agent notebooks copied into a new user's agents folder at
        the first start (those absent there; never again once done). "" copies none. Default:
        the notebooks/ folder of this checkout.""",
    )

    @default("examples_dir")
    def _default_examples_dir(self) -> str:
        folder = Path(__file__).resolve().parents[3] / "notebooks"
        return str(folder) if folder.is_dir() else ""

    @default("owner_prefix")
    def _default_owner_prefix(self) -> str:
        return os_user_prefix(os.environ.get("JUPYTERHUB_USER", ""))

    @default("approvals_path")
    def _default_approvals_path(self) -> str:
        return str(Path.home() / ".oraculo" / "agents" / "approvals.json")

    @default("runs_dir")
    def _default_runs_dir(self) -> str:
        return str(Path.home() / ".oraculo" / "agents" / "runs")

    def __init__(
        self,
        *,
        root_dir: str,
        user: str,
        models: ModelClient,
        execute: Callable[[], Any],
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        self.root = Path(root_dir).expanduser().resolve()
        self.user = user
        self.models = models
        self._execute = execute
        #: the MCP feature's client of the user's MCP servers (set at connect time), or None
        self.mcp_servers: Any = None
        #: agent tools from plugins, by name (``use_tools`` in an agent's metadata picks them)
        self.plugin_tools: dict[str, ToolSpec] = {}
        self._runs: dict[str, _Run] = {}
        Path(self.runs_dir).mkdir(parents=True, exist_ok=True, mode=0o700)
        self.approvals = Approvals(Path(self.approvals_path))

    def copy_examples(self) -> list[str]:
        """At a user's first start: the example agent notebooks into their agents folder (those
        not there already). A marker next to the run logs keeps it from happening again, so an
        example the user deleted stays deleted. Returns the files copied."""
        marker = Path(self.runs_dir).parent / "examples-copied"
        if not self.examples_dir or marker.exists():
            return []
        target = self.root / self.agents_dir
        copied: list[str] = []
        for spec in scan(Path(self.examples_dir), shared=False, depth=1):
            source = Path(spec.path)
            dest = target / source.name
            if dest.exists():
                continue
            target.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(source, dest)
            copied.append(str(dest))
        marker.write_text("\n".join(copied) + "\n")
        return copied

    # --- catalogue ------------------------------------------------------------------------------

    def _catalogue(self, releases: bool = True) -> list[AgentSpec]:
        """Own agents first, then the groups' published releases (unless not ``releases``),
        then the groups' working copies; the first of a name is the one that runs."""
        seen: dict[str, AgentSpec] = {}
        prefix = self.owner_prefix
        own = [self.root / self.agents_dir, *(self.root / d for d in self.search_dirs)]
        for folder in own:
            for spec in scan(folder, shared=False, root=self.root, owner_prefix=prefix):
                seen.setdefault(spec.name, spec)
        for shared in self.shared_dirs if releases else []:
            releases_dir = trusted_folder(Path(shared), PUBLISHED)
            if releases_dir is None:  # absent, or not the hub's: no releases from it
                continue
            for spec in scan(
                releases_dir, shared=True, owner_prefix=prefix, published=True, depth=1
            ):
                seen.setdefault(spec.name, spec)
        for shared in self.shared_dirs:
            for spec in scan(
                Path(shared), shared=True, owner_prefix=prefix, skip=(PUBLISHED, SHARED_RUNS)
            ):
                seen.setdefault(spec.name, spec)
        for spec in seen.values():  # the plugins' tools each agent opted into
            names = {t.name for t in spec.tools}
            wanted = [n for n in spec.use_tools if n in self.plugin_tools and n not in names]
            spec.tools += [self.plugin_tools[n] for n in wanted]
        return sorted(seen.values(), key=lambda s: (s.shared, not s.published, s.name))

    async def list_agents(self) -> list[dict[str, Any]]:
        approvals = self.approvals.read()
        return [
            s.summary() | {"needs_approval": s.shared and s.sha256 not in approvals}
            for s in await asyncio.to_thread(self._catalogue)
        ]

    # --- trust: approvals and releases ------------------------------------------------------------

    def _check_approvals(self, specs: list[AgentSpec], approve: list[str]) -> None:
        """Refuse (409 with each digest and the code to review) unless every shared agent's
        current digest is approved, now (``approve``) or before; keep the new approvals."""
        approved = self.approvals.read()
        needed = [s for s in specs if s.shared and s.sha256 not in approved]
        missing = [s for s in needed if s.sha256 not in approve]
        if missing:
            raise ApprovalRequired(missing)
        if needed:
            self.approvals.add(needed)

    def _group_folder(self, default: str, group: str | None) -> Path:
        folders = [Path(f) for f in self.shared_dirs]
        if group:
            chosen = [f for f in folders if str(f) == group or f.name == group]
            if not chosen:
                raise NotFound(f"No group folder {group!r} among yours")
        elif default:
            chosen = [Path(default)]
        else:
            chosen = folders if len(folders) == 1 else []
        if not chosen:
            names = ", ".join(f.name for f in folders) or "none"
            raise BadRequest(f"Name one of your group folders to publish to (yours: {names})")
        return chosen[0]

    async def publish(self, name: str, group: str | None, user: str) -> dict[str, Any]:
        """Copy the agent ``name`` as it is now (the user's own, or a group's working copy)
        into its group's ``published/`` folder."""
        drafts = await asyncio.to_thread(self._catalogue, False)
        spec = next((s for s in drafts if s.name == name), None)
        if spec is None:
            raise NotFound(f"No agent called {name!r} to publish")
        folder = self._group_folder(spec.group, group)
        source = Path(spec.path) if Path(spec.path).is_absolute() else self.root / spec.path
        data, _ = await asyncio.to_thread(read_file, source, follow=not spec.shared)
        if hashlib.sha256(data).hexdigest() != spec.sha256:
            raise Conflict(f"{spec.path} changed while publishing; publish again")
        try:
            target = await asyncio.to_thread(publish_copy, data, folder, spec.name)
        except PermissionError as e:  # a teammate's release: a maintainer's server asks the hub
            try:
                replaced = await replace_through_hub(data, folder, spec.name)
            except PermissionError as refused:
                raise Forbidden(str(refused)) from e
            if replaced is None:
                raise Forbidden(str(e)) from e
            target = replaced
        self.log.info("%s published agent %s %s to %s", user, name, spec.version, target)
        # the release as teammates see it (an own agent of the name may shadow it here)
        prefix = self.owner_prefix
        releases = functools.partial(scan, shared=True, owner_prefix=prefix, published=True)
        for s in await asyncio.to_thread(releases, target.parent, depth=1):
            if s.path == str(target):
                return s.summary()
        raise OraculoError(f"{target} was written but is not in the catalogue")

    async def agent(self, name: str) -> AgentSpec:
        for spec in await asyncio.to_thread(self._catalogue):
            if spec.name == name:
                return spec
        raise NotFound(f"No agent called {name!r}")

    # --- runs: public API -----------------------------------------------------------------------

    async def start(self, req: RunRequest, owner: str) -> dict[str, Any]:
        active = [r for r in self._runs.values() if not r.state.done]
        if len(active) >= self.max_active_runs:
            raise Conflict(f"{len(active)} runs are going already; wait or cancel one")
        specs, stages = await self._plan(req.agents)
        approve = [req.approve] if isinstance(req.approve, str) else list(req.approve or [])
        self._check_approvals(specs, approve)
        run_id = uuid.uuid4().hex
        run = _Run(RunState(id=run_id), EventLog(Path(self.runs_dir), run_id))
        self._runs[run_id] = run
        bounds = {
            "max_steps": req.max_steps or self.default_max_steps,
            "max_tokens": req.max_tokens or self.default_max_tokens,
            "timeout": req.timeout or self.default_timeout,
        }
        await run.emit(
            "run_started",
            owner=owner,
            goal=req.goal,
            agents=[s.model_dump() for s in specs],
            stages=stages,
            bounds=bounds,
            session=req.session,
        )
        await run.emit(
            "message", kind="input", **{"from": "user", "to": specs[0].name}, content=req.goal
        )
        self._launch(run)
        return run.state.summary()

    async def _plan(self, names: list[str]) -> tuple[list[AgentSpec], list[list[str]]]:
        """The run's agents and its stages: the requested chain, each agent followed by the
        parallel stage of its declared ``fan_out``; then the last one's declared ``handoff`` (and
        its fan-out), again and again. No agent twice; at most ``max_agents``."""
        specs: list[AgentSpec] = []
        stages: list[list[str]] = []

        async def add(stage: list[str]) -> bool:
            new = [n for n in dict.fromkeys(stage) if n not in {s.name for s in specs}]
            if not new:
                return False
            if len(specs) + len(new) > self.max_agents:
                raise BadRequest(f"A run may involve at most {self.max_agents} agents")
            specs.extend([await self.agent(n) for n in new])
            stages.append(new)
            return True

        last: AgentSpec | None = None
        for name in names:
            if await add([name]):
                last = specs[-1]
                if last.fan_out:
                    await add(last.fan_out)
        while last is not None and last.handoff and await add([last.handoff]):
            last = specs[-1]
            if last.fan_out:
                await add(last.fan_out)
        return specs, stages

    def _own(self, run_id: str, user: str) -> _Run:
        run = self._runs.get(run_id)
        if run is None or run.state.owner != user:
            raise NotFound(f"No run {run_id!r}")  # another user's run does not exist for you
        return run

    def list_runs(self, user: str) -> list[dict[str, Any]]:
        runs = [r.state.summary() for r in self._runs.values() if r.state.owner == user]
        return sorted(runs, key=lambda r: r["started"], reverse=True)

    def get(self, run_id: str, user: str) -> dict[str, Any]:
        run = self._own(run_id, user)
        return {**run.state.summary(), "events": run.state.events}

    def messages(self, run_id: str, user: str) -> list[dict[str, Any]]:
        """The run's typed messages (from, to, content, tool calls, tool results)."""
        return messages(self._own(run_id, user).state)

    async def send(self, run_id: str, user: str, content: str, to: str | None) -> dict[str, Any]:
        """A message to a running agent (``to``, default the one whose turn it is), read at its
        next step. 409 once the run has finished."""
        run = self._own(run_id, user)
        if run.state.done:
            raise Conflict(f"Run {run_id} has finished ({run.state.status}): nobody reads it")
        names = run.state.names
        working = run.state.working
        target = to or (working[0] if working else names[run.state.current])
        if target not in names:
            raise BadRequest(f"No agent {target!r} in this run (its agents: {', '.join(names)})")
        return await run.emit(
            "message", kind="note", **{"from": user, "to": target}, content=content
        )

    async def share(self, run_id: str, user: str, group: str | None) -> dict[str, Any]:
        """Share the run with a group (read-only): its events, copied now and kept up to date,
        in ``<group folder>/runs/<id>.jsonl``, a file of this account's in a sticky folder."""
        run = self._own(run_id, user)
        default = next((s.group for s in run.state.specs if s.group), "")
        folder = self._group_folder(default, group)
        path = folder / SHARED_RUNS / f"{run_id}.jsonl"
        if str(path) not in run.state.shared_to:
            await run.emit("shared", group=str(folder), path=str(path), by=user)
        lines = [
            json.dumps(e, ensure_ascii=False, separators=(",", ":")) + "\n"
            for e in run.state.events
        ]
        try:  # no await between the copy and the next event's append: nothing is missed
            write_shared_run(folder, run_id, lines)
        except PermissionError as e:
            raise Forbidden(str(e)) from e
        return run.state.summary()

    def _shared_runs(self) -> list[tuple[Path, RunState, str]]:
        found = []
        for shared in self.shared_dirs:
            runs = trusted_folder(Path(shared), SHARED_RUNS)
            if runs is None:
                continue
            for path in sorted(runs.glob("*.jsonl")):
                if not re.fullmatch(r"[0-9a-f]{32}", path.stem):
                    continue
                try:
                    data, st = read_file(path, follow=False)
                    state = RunState(id=path.stem)
                    for line in data.decode("utf-8").splitlines():
                        state.apply(json.loads(line))
                except (OSError, KeyError, ValueError, IndexError):
                    continue  # cut short, or not a run log: not listed
                found.append((path, state, hub_owner(st.st_uid, self.owner_prefix)))
        return found

    async def list_shared_runs(self) -> list[dict[str, Any]]:
        """Runs teammates shared with the user's groups; ``owner`` is who wrote the copy."""
        runs = [
            s.summary() | {"owner": owner, "shared_by": owner, "path": str(p)}
            for p, s, owner in await asyncio.to_thread(self._shared_runs)
        ]
        return sorted(runs, key=lambda r: r["started"], reverse=True)

    async def get_shared(self, run_id: str) -> dict[str, Any]:
        for _, s, owner in await asyncio.to_thread(self._shared_runs):
            if s.id == run_id:
                return s.summary() | {"owner": owner, "shared_by": owner, "events": s.events}
        raise NotFound(f"No run {run_id!r} shared with your groups")

    def export(self, run_id: str, user: str) -> dict[str, Any]:
        return export_notebook(self._own(run_id, user).state)

    async def cancel(self, run_id: str, user: str) -> dict[str, Any]:
        run = self._own(run_id, user)
        if not run.state.done:
            run.cancel_requested = True
            if run.task is not None:
                run.task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await run.task
            if not run.state.done:  # cancelled before its task ever ran
                await run.emit("run_finished", status="cancelled", reason="cancelled", answer="")
        return run.state.summary()

    async def follow(
        self, run_id: str, user: str, after: int = -1
    ) -> AsyncIterator[dict[str, Any]]:
        """The run's events after ``after`` (a ``seq``), then the new ones until it finishes."""
        run = self._own(run_id, user)
        sent = after
        while True:
            events = run.state.events[sent + 1 :]
            for ev in events:
                sent = ev["seq"]
                yield ev
            if run.state.done and sent >= len(run.state.events) - 1:
                return
            async with run.changed:
                if len(run.state.events) - 1 <= sent and not run.state.done:
                    await run.changed.wait()

    async def resume_all(self) -> None:
        """Load every run log; start again the runs that were going when the server stopped."""
        await self.prune()
        folder = Path(self.runs_dir)
        for path in sorted(await asyncio.to_thread(lambda: list(folder.glob("*.jsonl")))):
            run_id = path.stem
            if run_id in self._runs:
                continue
            log = EventLog(folder, run_id)
            try:
                events = await asyncio.to_thread(log.read)
                state = RunState(id=run_id)
                for ev in events:
                    state.apply(ev)
            except (OSError, KeyError, ValueError) as e:
                self.log.warning("agent run log %s unreadable: %s", path, e)
                continue
            if not state.specs:
                continue
            run = _Run(state, log)
            self._runs[run_id] = run
            if not state.done:
                self.log.info("resuming agent run %s", run_id)
                await run.emit("resumed", step=state.steps)
                self._launch(run)

    async def prune(self) -> list[str]:
        """Delete the logs of finished runs that are too old or, oldest first, past the size
        bound; returns the ids of the runs deleted. Runs going are never touched."""
        going = {i for i, r in self._runs.items() if not r.state.done}
        removed = await asyncio.to_thread(self._prune_logs, going)
        for run_id in removed:
            run = self._runs.get(run_id)
            if run is not None and run.state.done:
                del self._runs[run_id]
        if removed:
            self.log.info("pruned %d agent run logs", len(removed))
        return removed

    def _prune_logs(self, going: set[str]) -> list[str]:
        max_age = self.runs_max_age_days * 86400
        entries = []
        for path in Path(self.runs_dir).glob("*.jsonl"):
            with contextlib.suppress(OSError):
                st = path.lstat()
                entries.append((st.st_mtime, st.st_size, path))
        total = sum(size for _, size, _ in entries)
        now = time.time()
        removed: list[str] = []
        for mtime, size, path in sorted(entries):  # oldest first
            too_old = max_age > 0 and now - mtime > max_age
            too_big = self.runs_max_bytes > 0 and total > self.runs_max_bytes
            if not (too_old or too_big) or path.stem in going or not _finished_log(path):
                continue
            with contextlib.suppress(FileNotFoundError):
                path.unlink()
            total -= size
            removed.append(path.stem)
        return removed

    async def stop(self) -> None:
        """Server shutdown: stop the tasks, leaving the runs to resume at the next start."""
        tasks = [r.task for r in self._runs.values() if r.task is not None and not r.task.done()]
        for t in tasks:
            t.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)

    # --- orchestration --------------------------------------------------------------------------

    def _launch(self, run: _Run) -> None:
        run.task = asyncio.create_task(self._drive(run), name=f"agent-run-{run.state.id}")

    async def _drive(self, run: _Run) -> None:
        st = run.state
        remaining = st.bounds["timeout"] - (time.time() - st.started)
        try:
            if remaining <= 0:
                raise _Stop("bounded", f"wall clock of {st.bounds['timeout']:g} s reached")
            async with asyncio.timeout(remaining):
                answer = await self._chain(run)
            await run.emit("run_finished", status="succeeded", reason="", answer=answer)
        except _Stop as stop:
            await run.emit("run_finished", status=stop.status, reason=stop.reason, answer="")
        except TimeoutError:
            reason = f"wall clock of {st.bounds['timeout']:g} s reached"
            await run.emit("run_finished", status="bounded", reason=reason, answer="")
        except asyncio.CancelledError:
            if run.cancel_requested:
                await run.emit("run_finished", status="cancelled", reason="cancelled", answer="")
            raise  # a server shutdown leaves the run to resume
        except OraculoError as e:
            await run.emit("run_finished", status="failed", reason=e.message, answer="")
        except Exception:
            self.log.exception("agent run %s failed", st.id)
            await run.emit("run_finished", status="failed", reason="Unhandled error", answer="")
        if st.done:
            try:
                await self.prune()
            except Exception:  # pruning is housekeeping: never the run's failure
                self.log.exception("pruning agent run logs failed")

    async def _chain(self, run: _Run) -> str:
        """The stages in order, from the one going (a resumed run goes on where it stopped)."""
        st = run.state
        index = st.stage
        while True:
            stage = st.stages[index]
            if index > 0:
                await self._hand_over(run, st.stages[index - 1], stage)
            if len(stage) == 1:
                answers = [await self._branch(run, stage[0])]
            else:
                answers = await self._fan_out(run, stage)
            if index + 1 >= len(st.stages):
                if len(stage) == 1:
                    return answers[0]
                return "\n\n".join(f"{n}: {a}" for n, a in zip(stage, answers, strict=True))
            index += 1

    async def _hand_over(self, run: _Run, before: list[str], stage: list[str]) -> None:
        """The goal and the previous stage's answers, to each agent of ``stage`` that has not
        had them yet (a parallel stage is announced by a ``fan_out`` event first)."""
        st = run.state
        # (a message sent to an agent before its turn is in its transcript already)
        waiting = [n for n in stage if n not in st.given and n not in st.answers]
        if not waiting:
            return
        if len(stage) > 1 and len(waiting) == len(stage):
            await run.emit("fan_out", **{"from": ", ".join(before), "to": stage})
        said = "\n\n".join(f"{n} says:\n{st.answers.get(n, '')}" for n in before)
        content = f"Goal: {st.goal}\n\n{said}"
        for name in waiting:
            await run.emit(
                "message", kind="input", **{"from": ", ".join(before), "to": name}, content=content
            )

    async def _branch(self, run: _Run, name: str) -> str:
        """One agent's turn, unless it finished already (a resumed run); its answer."""
        st = run.state
        if name in st.answers:
            return st.answers[name]
        answer = await self._agent_turn(run, st.specs[st.names.index(name)])
        await run.emit("agent_finished", agent=name, answer=answer)
        return answer

    async def _fan_out(self, run: _Run, stage: list[str]) -> list[str]:
        """The branches of a parallel stage side by side; the first to fail stops the others."""
        tasks = [
            asyncio.create_task(self._branch(run, n), name=f"agent-{run.state.id}-{n}")
            for n in stage
        ]
        try:
            return list(await asyncio.gather(*tasks))
        except Exception:
            for t in tasks:
                t.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            # the other branches' tool calls were stopped: each gets its result, so the log
            # says what happened to every call
            for call_id, call in list(run.state.calling.items()):
                if call["agent"] in stage:
                    await run.emit(
                        "tool_result",
                        agent=call["agent"],
                        call_id=call_id,
                        tool=call["tool"],
                        content="Error: stopped: another branch ended the run",
                        output="",
                        error={"name": "Stopped", "value": "another branch ended the run"},
                        seconds=0.0,
                    )
            raise
        finally:
            for t in tasks:
                t.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)

    def _check_bounds(self, run: _Run, spec: AgentSpec) -> None:
        st = run.state
        if st.steps >= st.bounds["max_steps"]:
            raise _Stop("bounded", f"step bound of {st.bounds['max_steps']} reached")
        if st.tokens >= st.bounds["max_tokens"]:
            raise _Stop("bounded", f"token bound of {st.bounds['max_tokens']} reached")
        if st.stats[spec.name].steps >= spec.max_steps:
            raise _Stop("bounded", f"{spec.name} reached its step bound of {spec.max_steps}")

    async def _agent_turn(self, run: _Run, spec: AgentSpec) -> str:
        """Steps of one agent until it calls ``final_answer``; returns the answer."""
        st = run.state
        # calls left without a result by a restart are answered as interrupted
        for call_id, call in list(st.pending_calls.items()):
            if call["agent"] == spec.name and call["function"]["name"] != FINAL:
                await run.emit(
                    "tool_result",
                    agent=spec.name,
                    call_id=call_id,
                    tool=call["function"]["name"],
                    content="Error: interrupted by a server restart",
                    output="",
                    error={"name": "Interrupted", "value": "server restarted"},
                    seconds=0.0,
                )
        while True:
            self._check_bounds(run, spec)
            step = st.stats[spec.name].steps + 1
            await run.emit("step_started", agent=spec.name, step=step)
            message, tokens, seconds = await self._step(run, spec, step)
            calls = message.get("tool_calls") or []
            await run.emit(
                "message",
                kind="reply",
                **{"from": spec.name, "to": "tools" if calls else "user"},
                content=message.get("content"),
                tool_calls=calls,
                tokens=tokens,
                seconds=seconds,
            )
            if not calls:  # no valid call (cut short by max_tokens): the text is the answer
                return str(message.get("content") or "")
            for call in calls:
                name = call["function"]["name"]
                try:
                    args = json.loads(call["function"]["arguments"] or "{}")
                except json.JSONDecodeError:
                    args = {}
                if name == FINAL:
                    st.pending_calls.pop(call["id"], None)
                    return str(args.get("answer", ""))
                await self._call_tool(run, spec, call["id"], name, args)

    async def _step(
        self, run: _Run, spec: AgentSpec, step: int
    ) -> tuple[dict[str, Any], int, float]:
        st = run.state
        used = sum(1 for m in st.transcripts[spec.name] if m.get("role") == "tool")
        tools = [t.openai() for t in spec.tools]
        if spec.mcp and self.mcp_servers is not None:
            tools += await self.mcp_servers.openai_tools(spec.mcp)
        if spec.max_tool_calls is not None and used >= spec.max_tool_calls:
            tools = []  # its tool calls are spent: it answers
        must_use_tool = bool(tools) and spec.require_tool and not used
        if not must_use_tool:
            tools.append(_final_tool())
        system = spec.instructions or f"You are {spec.name}."
        system += (
            "\n\nWork step by step with your tools. When you are done, call final_answer "
            "with a short answer."
        )
        model = await self.models.resolve(spec.model)
        left = st.bounds["max_tokens"] - st.tokens
        body: dict[str, Any] = {
            "model": model.id,
            "messages": [{"role": "system", "content": system}, *st.transcripts[spec.name]],
            "tools": tools,
            "tool_choice": "required",
            "parallel_tool_calls": False,
            "temperature": spec.temperature,
            "max_tokens": max(1, min(self.reply_max_tokens, left)),
        }
        t0 = time.monotonic()
        stream = await self.models.open_stream(
            {**body, "stream_options": {"include_usage": True}}, f"run:{st.id}"
        )
        message, usage = await follow_tool_calls(stream, run.emit, spec.name, step)
        return message, int(usage.get("total_tokens", 0)), time.monotonic() - t0

    async def _call_tool(
        self, run: _Run, spec: AgentSpec, call_id: str, name: str, args: Any
    ) -> None:
        st = run.state
        tool = next((t for t in spec.tools if t.name == name), None)
        server = name.partition("__")[0]
        if tool is None and server in spec.mcp and isinstance(args, dict):
            await self._call_mcp_tool(run, spec, call_id, name, args)
            return
        if tool is None or not isinstance(args, dict):
            await run.emit(
                "tool_result",
                agent=spec.name,
                call_id=call_id,
                tool=name,
                content=f"Error: no tool {name!r} with these arguments",
                output="",
                error={"name": "UnknownTool", "value": name},
                seconds=0.0,
            )
            return
        setup = "\n".join(spec.setup)
        code = (
            f"{setup}\n{tool.source}\n\n"
            f"{name}(**__import__('json').loads({json.dumps(json.dumps(args))}))"
        ).lstrip()
        await run.emit(
            "tool_call", agent=spec.name, call_id=call_id, tool=name, arguments=args, code=code
        )
        execute = self._execute()
        if execute is None:
            raise OraculoError("The execute feature is not loaded: agents cannot call tools")
        left = st.bounds["timeout"] - (time.time() - st.started)
        timeout = max(1.0, min(spec.timeout, left, execute.limits.wall_clock_seconds))
        t0 = time.monotonic()
        result = await execute.execute(
            code,
            session=st.session,
            origin=f"agent:{spec.name}@{spec.sha256}",  # the audit names the exact version
            run_id=st.id,
            actor=st.owner,
            timeout=timeout,
        )
        value = ""
        for bundle in result.results:
            value = str(bundle.get("data", bundle).get("text/plain", value))
        error = result.error.model_dump() if result.error is not None else None
        if error is not None:
            content = f"Error: {error['name']}: {error['value']}"
        else:
            content = "\n".join(p for p in (result.output.strip(), value) if p) or "(no output)"
        await run.emit(
            "tool_result",
            agent=spec.name,
            call_id=call_id,
            tool=name,
            content=content[:4000],
            output=result.output[:20_000],
            result=value[:20_000],
            error=error,
            execution_id=result.execution_id,
            seconds=time.monotonic() - t0,
        )

    async def _call_mcp_tool(
        self, run: _Run, spec: AgentSpec, call_id: str, name: str, args: dict[str, Any]
    ) -> None:
        """A tool of one of the user's MCP servers, called from the server (its bearer token
        never goes near the kernel)."""
        await run.emit(
            "tool_call", agent=spec.name, call_id=call_id, tool=name, arguments=args, code=""
        )
        t0 = time.monotonic()
        error = None
        try:
            if self.mcp_servers is None:
                raise OraculoError("The mcp feature is not loaded: no MCP tools")
            text, failed = await self.mcp_servers.call(name, args)
            if failed:
                error = {"name": "ToolError", "value": text[:2000]}
        except OraculoError as e:
            text, error = "", {"name": type(e).__name__, "value": e.message}
        content = f"Error: {error['name']}: {error['value']}" if error else (text or "(no output)")
        await run.emit(
            "tool_result",
            agent=spec.name,
            call_id=call_id,
            tool=name,
            content=content[:4000],
            output="",
            result=text[:20_000],
            error=error,
            seconds=time.monotonic() - t0,
        )


def _finished_log(path: Path) -> bool:
    """Whether a run log ends with its ``run_finished`` event (read from its tail only)."""
    try:
        with open(path, "rb") as f:
            f.seek(max(0, f.seek(0, os.SEEK_END) - 65536))
            lines = f.read().splitlines()
        return bool(lines) and json.loads(lines[-1]).get("type") == "run_finished"
    except (OSError, ValueError, AttributeError):
        return False


def _final_tool() -> dict[str, Any]:
    return {
        "type": "function",
        "function": {
            "name": FINAL,
            "description": "Finish: give your answer to the goal.",
            "parameters": {
                "type": "object",
                "properties": {"answer": {"type": "string", "maxLength": ANSWER_CHARS}},
                "required": ["answer"],
            },
        },
    }
