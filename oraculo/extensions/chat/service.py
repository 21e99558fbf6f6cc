"""The chat service: an OpenAI chat-completions request in, the model service's answer out.

Between the two it resolves the model, loads the conversation (``conversation_id``), has the
:class:`~oraculo.extensions.chat.context.ContextService` assemble the prompt, and stores the
new turn and the reply. What it adds to OpenAI's response travels in one extra field,
``oraculo: {conversation_id, citations, memories, context, ...}`` (in the first and the final
chunk of a stream).
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

from pydantic import BaseModel
from traitlets.config import LoggingConfigurable

from oraculo.extensions.base.errors import NotFound
from oraculo.extensions.base.modelclient import (
    ChatStream,
    ModelClient,
    ModelInfo,
    ModelServiceError,
)
from oraculo.extensions.chat.context import Assembled, ContextService, estimate_tokens
from oraculo.extensions.chat.conversations import ConversationStore, new_id
from oraculo.extensions.chat.models import (
    ChatContextRequest,
    ChatRequest,
)
from oraculo.extensions.chat.notebooks import NotebookSessions


def refit_scale(error: ModelServiceError, estimate: int) -> float | None:
    """How much to scale the token estimate after ``context_length_exceeded`` (None: other
    errors). The model service says how many tokens the messages really took (the envelope's
    ``prompt_tokens`` field); without that, 2.
    """
    if error.type != "context_length_exceeded" or estimate <= 0:
        return None
    real = error.details.get("prompt_tokens")
    if not isinstance(real, int) or real <= 0:
        real = 2 * estimate
    return max(1.1, 1.05 * real / estimate)


_SAMPLING = ("temperature", "top_p", "max_tokens", "max_completion_tokens", "stop", "seed")
#: Passed to the model service as they came (validated above), so any OpenAI client gets
#: structured output and tool calls.
_PASSED = ("response_format", "tools", "tool_choice", "parallel_tool_calls")


_TOOL_FIELDS = ("tool_calls", "tool_call_id")


def _dump(value: Any) -> Any:
    if isinstance(value, list):
        return [_dump(v) for v in value]
    if isinstance(value, BaseModel):
        return value.model_dump(mode="json", by_alias=True, exclude_none=True)
    return value


def _from_stored(m: dict[str, Any]) -> dict[str, Any]:
    """A stored message as history: role, content and the tool fields kept in its meta."""
    out = {"role": m["role"], "content": m["content"]}
    meta = m.get("oraculo") or {}
    out.update({k: meta[k] for k in _TOOL_FIELDS if meta.get(k)})
    return out


def _to_stored(m: dict[str, Any]) -> dict[str, Any]:
    """A message of the new turn as stored: tool fields go in its meta."""
    meta = {k: m[k] for k in _TOOL_FIELDS if m.get(k)}
    return {"role": m["role"], "content": m["content"], **({"meta": meta} if meta else {})}


@dataclass
class PreparedChat:
    """A request, resolved and assembled, ready for the model service."""

    model: ModelInfo
    conversation_id: str | None
    is_new: bool
    new_turn: list[dict[str, Any]]
    assembled: Assembled
    body: dict[str, Any]
    #: The notebook this chat is about, and its live kernel (None: not open).
    binding: dict[str, Any] | None = None

    @property
    def ref(self) -> str | None:
        """What the model service counts this request's usage against."""
        return f"conversation:{self.conversation_id}" if self.conversation_id else None

    def extra(self, **more: Any) -> dict[str, Any]:
        a = self.assembled
        return {
            "conversation_id": self.conversation_id,
            "binding": self.binding,
            "model": self.model.id,
            "citations": a.citations,
            "memories": a.memories,
            "context": a.context,
            "prompt_tokens_estimate": a.prompt_tokens_estimate,
            "history_dropped": a.history_dropped,
            **more,
        }


#: Answers a chat for the models under a prefix: ``(model, messages) -> reply``.
Responder = Callable[[str, list[dict[str, Any]]], Awaitable[Any]]


class ChatService(LoggingConfigurable):
    """Answers chat requests for this server's user."""

    def __init__(
        self,
        models: ModelClient,
        context: ContextService,
        conversations: ConversationStore,
        notebooks: NotebookSessions | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        self.models = models
        self.context = context
        self.conversations = conversations
        self.notebooks = notebooks
        #: Model-name prefix → the feature's responder (see :meth:`register_responder`).
        self.responders: dict[str, Responder] = {}

    async def prepare(self, req: ChatRequest, scale: float = 1.0) -> PreparedChat:
        model = await self.models.resolve(req.model)
        history: list[dict[str, Any]] = []
        cid, is_new = req.conversation_id, False
        bound: str | None = None
        if cid is not None:
            conv = await self.conversations.get(cid)
            history = [_from_stored(m) for m in conv["messages"]]
            bound = conv.get("notebook")
        elif req.store:
            cid, is_new = new_id(), True
        new_turn = [m.wire() for m in req.messages]
        passed = {k: getattr(req, k) for k in _PASSED if getattr(req, k) is not None}
        wired = {k: _dump(v) for k, v in passed.items()}
        ctx = req.context or ChatContextRequest()
        # A notebook named here, else the one the conversation is bound to; its live kernel
        # (when it is open) gives the variables and what was run but not saved.
        notebook, kernel = ctx.notebook or bound, ctx.kernel
        if notebook and kernel is None and self.notebooks is not None:
            kernel = await self.notebooks.kernel_for(notebook)
        binding = {"notebook": notebook, "kernel": kernel} if notebook else None

        async def assemble(notebook: str | None) -> Assembled:
            return await self.context.assemble(
                history,
                new_turn,
                context_length=model.context_length,
                max_tokens=req.requested_max_tokens,
                reserved=estimate_tokens(json.dumps(wired)) if wired else 0,
                notebook=notebook,
                kernel=kernel,
                variables=ctx.variables,
                workspace=ctx.workspace,
                mentions=ctx.mentions,
                scale=scale,
            )

        try:
            assembled = await assemble(notebook)
        except NotFound:
            if ctx.notebook or not bound or kernel is not None:
                raise
            # the bound notebook was moved or deleted: chat goes on without its cells
            assembled = await assemble(None)
            assembled.context.setdefault("skipped", []).append(f"notebook {bound}: not found")
        body: dict[str, Any] = {"model": model.id, "messages": assembled.messages}
        for key in _SAMPLING:
            value = getattr(req, key)
            if value is not None:
                body[key] = value
        if req.stream_options is not None:
            body["stream_options"] = req.stream_options.model_dump()
        body.update(wired)
        return PreparedChat(model, cid, is_new, new_turn, assembled, body, binding)

    async def complete(self, req: ChatRequest) -> dict[str, Any]:
        """A whole reply: OpenAI's ``chat.completion`` plus ``oraculo``."""
        agent = await self._agent_reply(req)
        if agent is not None:
            return dict(await agent.body())
        prep = await self.prepare(req)
        try:
            body = await self.models.complete(prep.body, prep.ref)
        except ModelServiceError as e:
            prep = await self._refit(req, prep, e)
            body = await self.models.complete(prep.body, prep.ref)
        choice = (body.get("choices") or [{}])[0]
        message = choice.get("message") or {}
        text = str(message.get("content") or "")
        finish = str(choice.get("finish_reason") or "stop")
        await self.save(prep, text, finish, message.get("tool_calls"))
        body["oraculo"] = prep.extra()
        return body

    async def open_stream(self, req: ChatRequest) -> StreamingReply:
        """Start a streamed reply; errors until the model service answers 200 raise here."""
        agent = await self._agent_reply(req)
        if agent is not None:
            return agent  # the same interface: chunks, cancel(), close()
        prep = await self.prepare(req)
        try:
            upstream = await self.models.open_stream(prep.body, prep.ref)
        except ModelServiceError as e:
            prep = await self._refit(req, prep, e)
            upstream = await self.models.open_stream(prep.body, prep.ref)
        return StreamingReply(self, prep, upstream)

    def register_responder(self, prefix: str, responder: Responder) -> None:
        """Let another feature answer the models whose names start with ``prefix`` (the agents
        feature answers ``agent:<name>``). The responder gets the model name and the messages,
        and returns a reply with the interface of :class:`StreamingReply` (``body()``, chunks,
        ``cancel()``, ``close()``)."""
        self.responders[prefix] = responder

    async def _agent_reply(self, req: ChatRequest) -> Any:
        """A registered responder's reply for a model under its prefix; None for other models."""
        model = req.model or ""
        for prefix, responder in self.responders.items():
            if model.startswith(prefix):
                messages = [{"role": m.role, "content": m.text()} for m in req.messages]
                return await responder(model, messages)
        if model.startswith("agent:"):
            # the agents feature is not loaded: no agent answers
            raise NotFound(f"The model '{model}' does not exist.", reason="Unknown model")
        return None

    async def _refit(
        self, req: ChatRequest, prep: PreparedChat, error: ModelServiceError
    ) -> PreparedChat:
        """The prompt was longer than our estimate said: assemble it again, once, scaled by
        the real count the model service reported. Any other error goes to the client."""
        scale = refit_scale(error, prep.assembled.prompt_tokens_estimate)
        if scale is None:
            raise error
        self.log.info("chat: prompt estimate short by %.2fx; re-fitting", scale)
        return await self.prepare(req, scale)

    async def save(
        self,
        prep: PreparedChat,
        reply: str,
        finish_reason: str,
        tool_calls: list[dict[str, Any]] | None = None,
    ) -> None:
        """Store the new turn and the reply; a failure is logged, the reply still goes out."""
        if prep.conversation_id is None:
            return
        meta: dict[str, Any] = {
            "model": prep.model.id,
            "finish_reason": finish_reason,
            "citations": prep.assembled.citations,
            "memories": [m.get("key") for m in prep.assembled.memories],
            "context": prep.assembled.context,
        }
        if tool_calls:
            meta["tool_calls"] = tool_calls
        try:
            if prep.is_new:
                first = next((m["content"] for m in prep.new_turn if m["role"] == "user"), "")
                notebook = (prep.binding or {}).get("notebook")
                await self.conversations.create(
                    first, prep.model.id, prep.conversation_id, notebook=notebook
                )
            await self.conversations.append(
                prep.conversation_id,
                [
                    *(_to_stored(m) for m in prep.new_turn),
                    {"role": "assistant", "content": reply, "meta": meta},
                ],
                prep.model.id,
            )
        except Exception:
            self.log.exception("could not store chat turn in %s", prep.conversation_id)


@dataclass
class StreamingReply:
    """The chunks of one streamed reply; :meth:`close` stores what was said."""

    service: ChatService
    prep: PreparedChat
    upstream: ChatStream
    parts: list[str] = field(default_factory=list)
    tool_calls: list[dict[str, Any]] = field(default_factory=list)
    finish_reason: str | None = None
    _closed: bool = False
    _closing: asyncio.Future[None] | None = None

    async def __aiter__(self) -> AsyncIterator[dict[str, Any]]:
        first = True
        async for chunk in self.upstream:
            finished = False
            for choice in chunk.get("choices") or []:
                delta = choice.get("delta") or {}
                text = delta.get("content")
                if text:
                    self.parts.append(text)
                for call in delta.get("tool_calls") or []:
                    self._add_call(call)
                if choice.get("finish_reason"):
                    self.finish_reason = choice["finish_reason"]
                    finished = True
            if first or finished:
                chunk["oraculo"] = self.prep.extra()
                first = False
            yield chunk

    def _add_call(self, piece: dict[str, Any]) -> None:
        """Join a streamed tool call's pieces by index (OpenAI streams arguments in parts)."""
        index = int(piece.get("index", len(self.tool_calls)))
        while len(self.tool_calls) <= index:
            self.tool_calls.append({"type": "function", "function": {"name": "", "arguments": ""}})
        call = self.tool_calls[index]
        if piece.get("id"):
            call["id"] = piece["id"]
        fn = piece.get("function") or {}
        call["function"]["name"] += fn.get("name") or ""
        call["function"]["arguments"] += fn.get("arguments") or ""

    def cancel(self) -> None:
        """The client went away: stop reading (the model service stops generating)."""
        if self.finish_reason is None:
            self.finish_reason = "cancelled"
        self._closing = asyncio.ensure_future(self.upstream.aclose())

    async def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        await self.upstream.aclose()
        await self.service.save(
            self.prep, "".join(self.parts), self.finish_reason or "cancelled", self.tool_calls
        )
