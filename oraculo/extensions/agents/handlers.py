"""``/api/v1/agents``: the agent catalogue, and runs (start, list, get, events as SSE, cancel,
export as a notebook). Runs belong to the user whose credential started them; another user's run
is a 404."""

from __future__ import annotations

import json
from typing import Any

from jupyter_server.auth.decorator import authorized
from tornado import web
from tornado.iostream import StreamClosedError

from oraculo.extensions.agents.models import (
    NoteRequest,
    PublishRequest,
    RunRequest,
    ShareRequest,
)
from oraculo.extensions.base.errors import BadRequest, OraculoError
from oraculo.extensions.base.handlers import OraculoAPIHandler


def _dumps(body: Any) -> str:
    return json.dumps(body, separators=(",", ":"), ensure_ascii=False)


class _AgentsHandler(OraculoAPIHandler):
    @property
    def agents(self) -> Any:
        return self.feature("agents").service

    @property
    def user(self) -> str:
        return str(self.current_user.username)


class AgentsHandler(_AgentsHandler):
    """``GET /api/v1/agents``: the agents this user can run (own and shared)."""

    @web.authenticated
    @authorized
    async def get(self) -> None:
        self.finish({"agents": await self.agents.list_agents()})


class AgentHandler(_AgentsHandler):
    """``GET /api/v1/agents/{name}``: one agent with its instructions and tool schemas."""

    @web.authenticated
    @authorized
    async def get(self, name: str) -> None:
        spec = await self.agents.agent(name)
        self.finish(spec.summary() | spec.model_dump(include={"instructions", "tools"}))


class PublishHandler(_AgentsHandler):
    """``POST /api/v1/agents/{name}/publish``: copy the agent, as it is now, to its group's
    ``published/`` folder (201, the release's catalogue entry); 403 over a teammate's release."""

    @web.authenticated
    @authorized
    async def post(self, name: str) -> None:
        req = self.parse_body(PublishRequest)
        release = await self.agents.publish(name, req.group, self.user)
        self.set_status(201)
        self.finish(release)


class RunsHandler(_AgentsHandler):
    """``GET /api/v1/agents/runs``: this user's runs; ``POST``: start one (201 + Location)."""

    @web.authenticated
    @authorized
    async def get(self) -> None:
        self.finish({"runs": self.agents.list_runs(self.user)})

    @web.authenticated
    @authorized
    async def post(self) -> None:
        req = self.parse_body(RunRequest)
        await self.oraculo.models.check_policy("agents")  # cohort policy (oraculo.policy)
        run = await self.agents.start(req, self.user)
        self.set_status(201)
        self.set_header("Location", f"{self.base_url}api/v1/agents/runs/{run['id']}")
        self.finish(run)


class RunHandler(_AgentsHandler):
    """``GET /api/v1/agents/runs/{id}``: the run with its events."""

    @web.authenticated
    @authorized
    async def get(self, run_id: str) -> None:
        self.finish(self.agents.get(run_id, self.user))


class RunMessagesHandler(_AgentsHandler):
    """``GET /api/v1/agents/runs/{id}/messages``: the typed messages between the agents;
    ``POST`` (``{"content", "to"?}``): a message to the running agent, read at its next step
    (201, the event; 409 once the run has finished)."""

    @web.authenticated
    @authorized
    async def get(self, run_id: str) -> None:
        self.finish({"messages": self.agents.messages(run_id, self.user)})

    @web.authenticated
    @authorized
    async def post(self, run_id: str) -> None:
        req = self.parse_body(NoteRequest)
        event = await self.agents.send(run_id, self.user, req.content, req.to)
        self.set_status(201)
        self.finish(event)


class RunShareHandler(_AgentsHandler):
    """``POST /api/v1/agents/runs/{id}/share``: share the run with a group, read-only (its
    timeline, messages, tool calls and outputs; never the kernel)."""

    @web.authenticated
    @authorized
    async def post(self, run_id: str) -> None:
        req = self.parse_body(ShareRequest)
        self.finish(await self.agents.share(run_id, self.user, req.group))


class SharedRunsHandler(_AgentsHandler):
    """``GET /api/v1/agents/shared-runs``: runs teammates shared with the user's groups."""

    @web.authenticated
    @authorized
    async def get(self) -> None:
        self.finish({"runs": await self.agents.list_shared_runs()})


class SharedRunHandler(_AgentsHandler):
    """``GET /api/v1/agents/shared-runs/{id}``: one shared run with its events (read-only)."""

    @web.authenticated
    @authorized
    async def get(self, run_id: str) -> None:
        self.finish(await self.agents.get_shared(run_id))


class RunCancelHandler(_AgentsHandler):
    """``POST /api/v1/agents/runs/{id}/cancel``."""

    @web.authenticated
    @authorized
    async def post(self, run_id: str) -> None:
        self.finish(await self.agents.cancel(run_id, self.user))


class RunNotebookHandler(_AgentsHandler):
    """``GET /api/v1/agents/runs/{id}/notebook``: the run as an .ipynb."""

    @web.authenticated
    @authorized
    async def get(self, run_id: str) -> None:
        nb = self.agents.export(run_id, self.user)
        self.set_header("Content-Disposition", f'attachment; filename="run-{run_id[:8]}.ipynb"')
        self.finish(_dumps(nb))


class RunEventsHandler(_AgentsHandler):
    """``GET /api/v1/agents/runs/{id}/events``: SSE, from ``?after=seq`` (or ``Last-Event-ID``)
    until the run finishes."""

    _gone = False

    @web.authenticated
    @authorized
    async def get(self, run_id: str) -> None:
        raw = self.get_query_argument("after", None) or self.request.headers.get("Last-Event-ID")
        try:
            after = int(raw) if raw is not None else -1
        except ValueError as e:
            raise BadRequest("after must be an event's seq (an integer)") from e
        events = self.agents.follow(run_id, self.user, after)
        first = await anext(events, None)  # a missing run is a 404 before the stream starts
        self.set_header("Content-Type", "text/event-stream; charset=utf-8")
        self.set_header("Cache-Control", "no-cache")
        self.set_header("X-Accel-Buffering", "no")
        try:
            ev = first
            while ev is not None and not self._gone:
                self.write(f"id: {ev['seq']}\nevent: {ev['type']}\ndata: {_dumps(ev)}\n\n")
                await self.flush()
                ev = await anext(events, None)
        except StreamClosedError:
            return
        except OraculoError as e:
            self.write(f"event: error\ndata: {_dumps({'error': e.to_json()})}\n\n")
        finally:
            await events.aclose()
        if not self._gone:
            self.finish()

    def on_connection_close(self) -> None:
        self._gone = True
