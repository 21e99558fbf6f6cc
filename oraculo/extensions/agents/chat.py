"""An agent as a chat model: ``model: "agent:<name>"`` in ``/api/v1/chat`` starts a run of that
agent on the chat's last user message and answers with the run's answer, as OpenAI
``chat.completion`` or its chunks."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator
from typing import Any

from oraculo.extensions.agents.models import RunRequest
from oraculo.extensions.agents.runs import RunState
from oraculo.extensions.agents.service import AgentsService
from oraculo.extensions.base.errors import BadRequest

AGENT_MODEL_PREFIX = "agent:"


def agent_model(model: str | None) -> str | None:
    """The agent a chat request's ``model`` names (``agent:<name>``), or None."""
    if model and model.startswith(AGENT_MODEL_PREFIX):
        return model[len(AGENT_MODEL_PREFIX) :]
    return None


class AgentChatReply:
    """A run of one agent on a chat, as OpenAI ``chat.completion`` (:meth:`body`) or chunks
    (iterate; the same interface as the chat service's streamed reply: ``cancel``/``close``)."""

    def __init__(self, service: AgentsService, run_id: str, model: str) -> None:
        self.service = service
        self.run_id = run_id
        self.model = model
        self.cid = f"chatcmpl-{run_id[:24]}"
        self.created = int(time.time())

    async def _finish(self) -> RunState:
        run = self.service._runs[self.run_id]
        if run.task is not None:
            with contextlib.suppress(asyncio.CancelledError):
                await asyncio.shield(run.task)
        return run.state

    def _usage(self, st: RunState) -> dict[str, int]:
        return {"prompt_tokens": 0, "completion_tokens": st.tokens, "total_tokens": st.tokens}

    def _extra(self, st: RunState) -> dict[str, Any]:
        return {"agent_run": {"id": st.id, "status": st.status, "reason": st.reason}}

    async def body(self) -> dict[str, Any]:
        st = await self._finish()
        return {
            "id": self.cid,
            "object": "chat.completion",
            "created": self.created,
            "model": self.model,
            "choices": [
                {
                    "index": 0,
                    "message": {"role": "assistant", "content": st.answer or st.reason},
                    "finish_reason": "stop" if st.status == "succeeded" else "length",
                    "logprobs": None,
                }
            ],
            "usage": self._usage(st),
            "oraculo": self._extra(self.service._runs[self.run_id].state),
        }

    def _chunk(self, delta: dict[str, Any] | None, finish: str | None) -> dict[str, Any]:
        return {
            "id": self.cid,
            "object": "chat.completion.chunk",
            "created": self.created,
            "model": self.model,
            "choices": []
            if delta is None
            else [{"index": 0, "delta": delta, "finish_reason": finish, "logprobs": None}],
        }

    async def __aiter__(self) -> AsyncIterator[dict[str, Any]]:
        first = self._chunk({"role": "assistant", "content": ""}, None)
        first["oraculo"] = {"agent_run": {"id": self.run_id, "status": "running"}}
        yield first
        st = await self._finish()
        yield self._chunk({"content": st.answer or st.reason}, None)
        last = self._chunk({}, "stop" if st.status == "succeeded" else "length")
        last["oraculo"] = self._extra(st)
        last["usage"] = self._usage(st)
        yield last

    def cancel(self) -> None:
        run = self.service._runs.get(self.run_id)
        if run is not None and not run.state.done:
            run.cancel_requested = True
            if run.task is not None:
                run.task.cancel()

    async def close(self) -> None:
        """Nothing to store: the run keeps its own log."""


async def chat_reply(
    service: AgentsService, model: str, messages: list[dict[str, Any]], owner: str
) -> AgentChatReply:
    """Start the agent ``model`` names on the chat's last user message."""
    name = agent_model(model)
    assert name is not None
    goal = next(
        (str(m.get("content") or "") for m in reversed(messages) if m.get("role") == "user"), ""
    )
    if not goal:
        raise BadRequest("An agent needs a user message to work on")
    summary = await service.start(RunRequest(goal=goal, agents=[name]), owner)
    return AgentChatReply(service, summary["id"], model)
