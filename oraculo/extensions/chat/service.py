"""The chat service: an OpenAI chat-completions request in, the model service's answer out.

Between the two it resolves the model, loads the conversation (``conversation_id``), has the
:class:`~oraculo.extensions.chat.context.ContextService` assemble the prompt, and stores the
new turn and the reply. What it adds to OpenAI's response travels in one extra field,
``oraculo: {conversation_id, citations, memories, context, ...}`` (in the first and the final
chunk of a stream).
"""

from __future__ import annotations

import asyncio
import re
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator
from traitlets.config import LoggingConfigurable

from oraculo.extensions.base.modelclient import (
    ChatStream,
    ModelClient,
    ModelInfo,
    ModelServiceError,
)
from oraculo.extensions.chat.context import Assembled, ContextService
from oraculo.extensions.chat.conversations import ConversationStore, new_id

# --- wire models ------------------------------------------------------------------------------


class _Strict(BaseModel):
    model_config = ConfigDict(strict=True, extra="ignore")


class TextPart(_Strict):
    type: Literal["text"]
    text: Annotated[str, Field(max_length=200_000)]


class Message(_Strict):
    role: Literal["system", "developer", "user", "assistant"]
    content: Annotated[str, Field(max_length=200_000)] | list[TextPart] | None = None
    name: str | None = None

    def text(self) -> str:
        if self.content is None:
            return ""
        if isinstance(self.content, str):
            return self.content
        return "".join(p.text for p in self.content)


class StreamOptions(_Strict):
    include_usage: bool = False


class ChatContextRequest(_Strict):
    """``context`` extra field: what of the workspace to send besides memories and passages."""

    notebook: Annotated[str, Field(min_length=1, max_length=1024)] | None = None
    kernel: Annotated[str, Field(min_length=1, max_length=64)] | None = None
    #: A variables summary the client made itself (the ``%%chat`` magic does, in the kernel).
    variables: Annotated[list[dict[str, Any]], Field(max_length=200)] | None = None
    #: Search the user's memories and workspace files (false: send neither, cite nothing).
    workspace: bool = True


class ChatRequest(_Strict):
    """OpenAI's chat-completions request, plus ``conversation_id``, ``context`` and ``store``."""

    model: Annotated[str, Field(min_length=1, max_length=200)] | None = None
    messages: Annotated[list[Message], Field(min_length=1, max_length=1000)]
    temperature: Annotated[float, Field(ge=0, le=2)] | None = None
    top_p: Annotated[float, Field(gt=0, le=1)] | None = None
    max_tokens: Annotated[int, Field(ge=1)] | None = None
    max_completion_tokens: Annotated[int, Field(ge=1)] | None = None
    n: Annotated[int, Field(ge=1, le=1)] = 1
    stop: str | Annotated[list[str], Field(max_length=4)] | None = None
    seed: int | None = None
    stream: bool = False
    stream_options: StreamOptions | None = None
    # extra fields
    conversation_id: Annotated[str, Field(pattern=r"^[0-9a-f]{32}$")] | None = None
    context: ChatContextRequest | None = None
    store: bool = True

    @field_validator("stop")
    @classmethod
    def _no_empty_stop(cls, v: str | list[str] | None) -> str | list[str] | None:
        if v is not None and any(s == "" for s in ([v] if isinstance(v, str) else v)):
            raise ValueError("stop sequences must not be empty")
        return v

    @property
    def requested_max_tokens(self) -> int | None:
        return self.max_completion_tokens or self.max_tokens


class ConversationCreate(_Strict):
    title: Annotated[str, Field(max_length=500)] = ""


class ConversationUpdate(_Strict):
    title: Annotated[str, Field(min_length=1, max_length=500)]


# --- service ----------------------------------------------------------------------------------

_PROMPT_TOKENS = re.compile(r"\((\d+) in the messages")


def refit_scale(error: ModelServiceError, estimate: int) -> float | None:
    """How much to scale the token estimate after ``context_length_exceeded`` (None: other
    errors). The model service says how many tokens the messages really took; without that, 2.
    """
    if error.type != "context_length_exceeded" or estimate <= 0:
        return None
    found = _PROMPT_TOKENS.search(error.message)
    real = int(found.group(1)) if found else 2 * estimate
    return max(1.1, 1.05 * real / estimate)


_SAMPLING = ("temperature", "top_p", "max_tokens", "max_completion_tokens", "stop", "seed")


@dataclass
class PreparedChat:
    """A request, resolved and assembled, ready for the model service."""

    model: ModelInfo
    conversation_id: str | None
    is_new: bool
    new_turn: list[dict[str, Any]]
    assembled: Assembled
    body: dict[str, Any]

    def extra(self, **more: Any) -> dict[str, Any]:
        a = self.assembled
        return {
            "conversation_id": self.conversation_id,
            "model": self.model.id,
            "citations": a.citations,
            "memories": a.memories,
            "context": a.context,
            "prompt_tokens_estimate": a.prompt_tokens_estimate,
            "history_dropped": a.history_dropped,
            **more,
        }


class ChatService(LoggingConfigurable):
    """Answers chat requests for this server's user."""

    def __init__(
        self,
        models: ModelClient,
        context: ContextService,
        conversations: ConversationStore,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        self.models = models
        self.context = context
        self.conversations = conversations

    async def prepare(self, req: ChatRequest, scale: float = 1.0) -> PreparedChat:
        model = await self.models.resolve(req.model)
        history: list[dict[str, Any]] = []
        cid, is_new = req.conversation_id, False
        if cid is not None:
            conv = await self.conversations.get(cid)
            history = [{"role": m["role"], "content": m["content"]} for m in conv["messages"]]
        elif req.store:
            cid, is_new = new_id(), True
        new_turn = [{"role": m.role, "content": m.text()} for m in req.messages]
        ctx = req.context or ChatContextRequest()
        assembled = await self.context.assemble(
            history,
            new_turn,
            context_length=model.context_length,
            max_tokens=req.requested_max_tokens,
            notebook=ctx.notebook,
            kernel=ctx.kernel,
            variables=ctx.variables,
            workspace=ctx.workspace,
            scale=scale,
        )
        body: dict[str, Any] = {"model": model.id, "messages": assembled.messages}
        for key in _SAMPLING:
            value = getattr(req, key)
            if value is not None:
                body[key] = value
        if req.stream_options is not None:
            body["stream_options"] = req.stream_options.model_dump()
        return PreparedChat(model, cid, is_new, new_turn, assembled, body)

    async def complete(self, req: ChatRequest) -> dict[str, Any]:
        """A whole reply: OpenAI's ``chat.completion`` plus ``oraculo``."""
        agent = await self._agent_reply(req)
        if agent is not None:
            return dict(await agent.body())
        prep = await self.prepare(req)
        try:
            body = await self.models.complete(prep.body)
        except ModelServiceError as e:
            prep = await self._refit(req, prep, e)
            body = await self.models.complete(prep.body)
        choice = (body.get("choices") or [{}])[0]
        text = str((choice.get("message") or {}).get("content") or "")
        await self.save(prep, text, str(choice.get("finish_reason") or "stop"))
        body["oraculo"] = prep.extra()
        return body

    async def open_stream(self, req: ChatRequest) -> StreamingReply:
        """Start a streamed reply; errors until the model service answers 200 raise here."""
        agent = await self._agent_reply(req)
        if agent is not None:
            return agent  # the same interface: chunks, cancel(), close()
        prep = await self.prepare(req)
        try:
            upstream = await self.models.open_stream(prep.body)
        except ModelServiceError as e:
            prep = await self._refit(req, prep, e)
            upstream = await self.models.open_stream(prep.body)
        return StreamingReply(self, prep, upstream)

    async def _agent_reply(self, req: ChatRequest) -> Any:
        """``model: "agent:<name>"``: a run of that agent answers (agents feature), else None."""
        if not (req.model or "").startswith("agent:"):
            return None
        from oraculo.extensions.agents.service import chat_reply
        from oraculo.extensions.base.errors import NotFound

        feature = self.parent.extension.loaded.get("agents") if self.parent is not None else None
        if feature is None:
            raise NotFound(f"The model '{req.model}' does not exist.", reason="Unknown model")
        messages = [{"role": m.role, "content": m.text()} for m in req.messages]
        return await chat_reply(feature.service, req.model or "", messages, feature.service.user)

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

    async def save(self, prep: PreparedChat, reply: str, finish_reason: str) -> None:
        """Store the new turn and the reply; a failure is logged, the reply still goes out."""
        if prep.conversation_id is None:
            return
        meta = {
            "model": prep.model.id,
            "finish_reason": finish_reason,
            "citations": prep.assembled.citations,
            "memories": [m.get("key") for m in prep.assembled.memories],
            "context": prep.assembled.context,
        }
        try:
            if prep.is_new:
                first = next((m["content"] for m in prep.new_turn if m["role"] == "user"), "")
                await self.conversations.create(first, prep.model.id, prep.conversation_id)
            await self.conversations.append(
                prep.conversation_id,
                [*prep.new_turn, {"role": "assistant", "content": reply, "meta": meta}],
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
    finish_reason: str | None = None
    _closed: bool = False
    _closing: asyncio.Future[None] | None = None

    async def __aiter__(self) -> AsyncIterator[dict[str, Any]]:
        first = True
        async for chunk in self.upstream:
            finished = False
            for choice in chunk.get("choices") or []:
                text = (choice.get("delta") or {}).get("content")
                if text:
                    self.parts.append(text)
                if choice.get("finish_reason"):
                    self.finish_reason = choice["finish_reason"]
                    finished = True
            if first or finished:
                chunk["oraculo"] = self.prep.extra()
                first = False
            yield chunk

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
        await self.service.save(self.prep, "".join(self.parts), self.finish_reason or "cancelled")
