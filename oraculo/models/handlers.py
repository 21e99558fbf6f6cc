"""HTTP routes of the model service (tornado): authenticate, validate, call the service, serialise.

Every error leaves as OpenAI's envelope with a proper status (``Retry-After`` on 429/503). After a
streaming 200, an error travels in-band as a ``data: {"error": ...}`` event before ``[DONE]``.
"""

from __future__ import annotations

import base64
import json
import struct
import time
from typing import Any

from tornado.iostream import StreamClosedError

from oraculo.openapi import operation

from . import constrained
from .audio import audio_routes
from .backends import ChatStream
from .basehandler import BaseHandler
from .errors import Forbidden, InvalidRequest, NotFound
from .protocol import (
    ChatCompletion,
    ChatCompletionRequest,
    EmbeddingList,
    EmbeddingRequest,
    ModelCard,
    ModelList,
    Usage,
    chunk_body,
    completion_body,
    new_id,
    parse_body,
)
from .service import ModelService
from .toolstream import ToolCallStream

__all__ = ["BaseHandler", "routes"]


class HealthHandler(BaseHandler):
    auth_required = False

    @operation(summary="Whether the service is up and its models loaded (no token needed)")
    def get(self) -> None:
        self.write_json(self.service.health())


class MetricsHandler(BaseHandler):
    """Prometheus metrics, for operators: like JupyterHub's own ``/hub/metrics``, they need a
    token, here one that may read everyone's usage (admins; a scraper's service token with
    ``custom:oraculo:usage:read-all``)."""

    @operation(summary="Prometheus metrics (operators)", content_type="text/plain")
    def get(self) -> None:
        assert self.identity is not None
        if not self.identity.can_read_all_usage:
            raise Forbidden("Metrics are for operators: the token lacks the usage read-all scope.")
        body, content_type = self.service.metrics.render()
        self.set_header("Content-Type", content_type)
        self.finish(body)


class ModelsHandler(BaseHandler):
    endpoint = "models"

    @operation(summary="The models (or the model model_id)", responses={200: ModelList | ModelCard})
    def get(self, model_id: str | None = None) -> None:
        cards = [
            ModelCard(
                id=b.spec.name,
                kind=b.spec.kind,
                aliases=b.spec.aliases,
                context_length=b.context_length(),
                created=int(self.service.started_at),
            ).model_dump()
            for b in self.service.registry
        ]
        if model_id is None:
            self.write_json({"object": "list", "data": cards})
            return
        for card in cards:
            if model_id == card["id"] or model_id in card["aliases"]:
                self.write_json(card)
                return
        raise NotFound(
            f"The model '{model_id}' does not exist.", param="model", code="model_not_found"
        )


class ChatCompletionsHandler(BaseHandler):
    endpoint = "chat.completions"
    _stream: ChatStream | None = None

    @operation(
        summary="Chat completion (OpenAI's API); stream=true answers server-sent events",
        request=ChatCompletionRequest,
        responses={200: ChatCompletion},
        stream=True,
    )
    async def post(self) -> None:
        assert self.identity is not None
        req = parse_body(self.request.body, ChatCompletionRequest)
        backend = self.service.backend(req.model, "chat")
        self.model_name = backend.spec.name
        await self.service.cohorts.check_model(
            self.identity, [backend.spec.name, *backend.spec.aliases]
        )
        await self.service.limiter.check(self.identity)
        self._stream = stream = await backend.start_chat(req)
        self.prompt_tokens = stream.prompt_tokens
        if self.request.connection is None or getattr(self, "_gone", False):
            stream.cancel()
        cid, created = new_id("chatcmpl"), int(time.time())
        if req.stream:
            await self._stream_sse(stream, req, cid, created)
            return
        parts = []
        async for text in stream:
            if self.ttft_ms is None:
                self.ttft_ms = (time.monotonic() - self.started) * 1000
            parts.append(text)
        self._account(stream)
        if stream.error is not None:
            raise stream.error
        if stream.finish_reason == "cancelled":
            return
        usage = Usage.of(stream.prompt_tokens, stream.completion_tokens)
        text = "".join(parts)
        message, finish = _final_message(req, stream, text)
        self.write_json(
            completion_body(cid, self.model_name, text, finish, usage, created, message=message)
        )

    async def _stream_sse(
        self, stream: ChatStream, req: ChatCompletionRequest, cid: str, created: int
    ) -> None:
        self.set_header("Content-Type", "text/event-stream; charset=utf-8")
        self.set_header("Cache-Control", "no-cache")
        self.set_header("X-Accel-Buffering", "no")
        model = self.model_name

        async def send(body: dict[str, Any] | str) -> None:
            data = body if isinstance(body, str) else _dumps(body)
            self.write(f"data: {data}\n\n")
            await self.flush()

        # a reply that may call tools: its calls stream as the model writes them (name first,
        # then the arguments in fragments); its text is sent whole at the end, once the calls
        # are known (the non-streamed answer's content)
        held: list[str] | None = [] if constrained.wants_tool_calls(req) else None
        calls = ToolCallStream()
        try:
            await send(chunk_body(cid, model, created, delta={"role": "assistant", "content": ""}))
            async for text in stream:
                if self.ttft_ms is None:
                    self.ttft_ms = (time.monotonic() - self.started) * 1000
                if held is not None:
                    held.append(text)
                    if deltas := calls.feed(text):
                        await send(chunk_body(cid, model, created, delta={"tool_calls": deltas}))
                else:
                    await send(chunk_body(cid, model, created, delta={"content": text}))
            self._account(stream)
            if stream.error is not None:
                self.error_type = stream.error.code or stream.error.type
                await send(stream.error.to_json())
            elif stream.finish_reason != "cancelled":
                finish = stream.finish_reason
                if held is not None:
                    message, finish = _final_message(req, stream, "".join(held))
                    delta = {k: v for k, v in message.items() if k != "role" and v is not None}
                    rest = _unstreamed(delta.pop("tool_calls", []), calls.streamed())
                    if rest:
                        delta["tool_calls"] = rest
                    if delta:
                        await send(chunk_body(cid, model, created, delta=delta))
                await send(chunk_body(cid, model, created, delta={}, finish_reason=finish))
                if req.include_usage:
                    usage = Usage.of(stream.prompt_tokens, stream.completion_tokens)
                    await send(chunk_body(cid, model, created, usage=usage))
            await send("[DONE]")
            self.finish()
        except StreamClosedError:
            stream.cancel()
            self._account(stream)
            self.error_type = "client_disconnected"

    def _account(self, stream: ChatStream) -> None:
        self.prompt_tokens = stream.prompt_tokens
        self.completion_tokens = stream.completion_tokens
        if stream.finish_reason == "cancelled":
            self.error_type = "client_disconnected"

    def on_connection_close(self) -> None:
        self._gone = True
        if self._stream is not None:
            self._stream.cancel()


def _final_message(
    req: ChatCompletionRequest, stream: ChatStream, text: str
) -> tuple[dict[str, Any], str]:
    """The assistant message and finish reason: tool calls an upstream sent as such, else what
    the text holds (a local model's calls are text that :mod:`.constrained` parses)."""
    finish = stream.finish_reason or "stop"
    if stream.tool_calls:
        message = {"role": "assistant", "content": text or None, "tool_calls": stream.tool_calls}
        return message, "tool_calls" if finish == "stop" else finish
    return constrained.final_message(req, text, finish)


def _unstreamed(
    final: list[dict[str, Any]], streamed: list[dict[str, Any]]
) -> list[dict[str, Any]]:
    """The calls of the whole message that were not streamed already, with their ``index``
    (after the streamed ones): none when the stream followed every call (a local model's), all
    when it followed none (an upstream's, sent whole)."""
    names = [c["function"]["name"] for c in final]
    same = [c["function"]["name"] for c in streamed] == names[: len(streamed)]
    start = len(streamed) if same else 0
    return [{**call, "index": i} for i, call in enumerate(final[start:], start=len(streamed))]


class EmbeddingsHandler(BaseHandler):
    endpoint = "embeddings"

    @operation(
        summary="Embeddings (OpenAI's API)",
        request=EmbeddingRequest,
        responses={200: EmbeddingList},
    )
    async def post(self) -> None:
        assert self.identity is not None
        req = parse_body(self.request.body, EmbeddingRequest)
        backend = self.service.backend(req.model, "embedding")
        self.model_name = backend.spec.name
        await self.service.limiter.check(self.identity)
        vectors, tokens = await backend.embed(req.inputs)
        self.prompt_tokens = tokens
        if req.dimensions is not None and vectors and req.dimensions != len(vectors[0]):
            raise InvalidRequest(
                f"This model produces {len(vectors[0])} dimensions; "
                "'dimensions' cannot change that.",
                param="dimensions",
            )
        data = []
        for i, vec in enumerate(vectors):
            emb: Any = vec
            if req.encoding_format == "base64":
                emb = base64.b64encode(struct.pack(f"<{len(vec)}f", *vec)).decode("ascii")
            data.append({"object": "embedding", "index": i, "embedding": emb})
        self.write_json(
            {
                "object": "list",
                "data": data,
                "model": self.model_name,
                "usage": {"prompt_tokens": tokens, "total_tokens": tokens},
            }
        )


class UsageHandler(BaseHandler):
    endpoint = "usage"

    async def get(self) -> None:
        assert self.identity is not None
        who = self.get_argument("user", None)
        if not self.identity.can_read_all_usage:
            if who not in (None, self.identity.name):
                raise Forbidden("You may only read your own usage.", param="user")
            who = self.identity.name
        try:
            since = float(self.get_argument("since", "0")) or None
            limit = min(max(int(self.get_argument("limit", "100")), 1), 1000)
        except ValueError:
            raise InvalidRequest("'since' must be a unix time and 'limit' an integer.") from None
        result = await self.service.store.aquery(who, since, limit)
        self.write_json({"object": "list", "user": who, **result})


class PolicyHandler(BaseHandler):
    """``GET /v1/policy``: what the caller's cohorts allow now (oraculo.policy); the user's
    server asks before chat, voice and agents work, and its kernel provisioner for limits."""

    endpoint = "policy"

    async def get(self) -> None:
        assert self.identity is not None
        policy = await self.service.cohorts.effective(self.identity)
        self.write_json(policy.to_json())


class NotFoundHandler(BaseHandler):
    auth_required = False

    def prepare(self) -> None:  # type: ignore[override]
        raise NotFound(f"Unknown route {self.request.path}.")


def _dumps(body: dict[str, Any]) -> str:
    return json.dumps(body, separators=(",", ":"), ensure_ascii=False)


def routes(prefix: str, service: ModelService) -> list[Any]:
    """The URL table under ``prefix`` (which ends in ``/``)."""
    kw = {"service": service}
    return [
        (rf"{prefix}health", HealthHandler, kw),
        (rf"{prefix}metrics", MetricsHandler, kw),
        (rf"{prefix}v1/models", ModelsHandler, kw),
        (rf"{prefix}v1/models/(.+)", ModelsHandler, kw),
        (rf"{prefix}v1/chat/completions", ChatCompletionsHandler, kw),
        (rf"{prefix}v1/embeddings", EmbeddingsHandler, kw),
        *audio_routes(prefix, kw),
        (rf"{prefix}v1/usage", UsageHandler, kw),
        (rf"{prefix}v1/policy", PolicyHandler, kw),
        (r".*", NotFoundHandler, kw),
    ]
