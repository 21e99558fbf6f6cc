"""Forward a model to an upstream OpenAI-compatible server (vLLM, Ollama, a hosted API, another
Oráculo).

The upstream key stays here: it is read from the environment variable the spec names
(``api_key_env``) and never reaches clients or logs. Upstream chats are always streamed with usage,
so metering and client disconnects work the same as for local models; the client still gets whatever
shape it asked for."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
from typing import Any

import httpx

from ..errors import (
    InvalidRequest,
    ModelNotFound,
    ModelServiceError,
    Overloaded,
    RateLimited,
    UpstreamError,
)
from ..protocol import ChatCompletionRequest
from .base import Backend, ChatStream


def _upstream_error(status: int, body: bytes) -> ModelServiceError:
    try:
        message = str(json.loads(body)["error"]["message"])
    except Exception:
        message = f"upstream answered {status}"
    cls: type[ModelServiceError] = {
        400: InvalidRequest,
        404: ModelNotFound,
        429: RateLimited,
        503: Overloaded,
    }.get(status, UpstreamError)
    if cls is UpstreamError:
        message = f"upstream answered {status}"
    return cls(message, retry_after=5 if cls in (RateLimited, Overloaded) else None)


class UpstreamBackend(Backend):
    """An OpenAI-compatible server reached over HTTP; ``source`` is its base URL (ending in
    ``/v1``).
    """

    def load(self) -> None:
        headers = {}
        key = os.environ.get(self.spec.api_key_env) if self.spec.api_key_env else None
        if self.spec.api_key_env and not key:
            self.log.warning(
                "upstream key env %s for %s is empty", self.spec.api_key_env, self.spec.name
            )
        if key:
            headers["Authorization"] = f"Bearer {key}"
        self.client = httpx.AsyncClient(
            base_url=self.spec.source.rstrip("/") + "/",
            headers=headers,
            timeout=httpx.Timeout(self.spec.timeout, connect=10.0),
        )

    async def aclose(self) -> None:
        await self.client.aclose()

    def info(self) -> dict[str, Any]:
        # the URL may embed credentials in some deployments: report the host only
        return {**super().info(), "upstream_host": httpx.URL(self.spec.source).host}

    @property
    def _model(self) -> str:
        return self.spec.upstream_model or self.spec.name

    async def start_chat(self, request: ChatCompletionRequest) -> ChatStream:
        body = request.model_dump(exclude_none=True, exclude={"user"})
        body.update(model=self._model, stream=True, stream_options={"include_usage": True})
        req = self.client.build_request("POST", "chat/completions", json=body)
        try:
            resp = await self.client.send(req, stream=True)
        except httpx.HTTPError as e:
            raise UpstreamError(
                f"upstream for {self.spec.name} unreachable ({type(e).__name__})"
            ) from None
        if resp.status_code != 200:
            content = await resp.aread()
            await resp.aclose()
            raise _upstream_error(resp.status_code, content)
        stream = ChatStream()
        task = asyncio.create_task(self._pump(resp, stream))
        stream.on_cancel(task.cancel)
        return stream

    async def _pump(self, resp: httpx.Response, stream: ChatStream) -> None:
        finish, prompt, completion = "stop", 0, 0
        error: ModelServiceError | None = None
        calls: dict[int, dict[str, Any]] = {}  # streamed tool calls, joined by index
        try:
            async for line in resp.aiter_lines():
                if not line.startswith("data:"):
                    continue
                data = line[5:].strip()
                if data == "[DONE]":
                    break
                chunk = json.loads(data)
                if "error" in chunk:
                    error = UpstreamError(str(chunk["error"].get("message", "upstream error")))
                    finish = "error"
                    break
                if chunk.get("usage"):
                    prompt = int(chunk["usage"].get("prompt_tokens", 0))
                    completion = int(chunk["usage"].get("completion_tokens", 0))
                for choice in chunk.get("choices", []):
                    delta = choice.get("delta") or {}
                    text = delta.get("content")
                    if text:
                        stream.put(text)
                    for part in delta.get("tool_calls") or []:
                        _join_tool_call(calls, part)
                    if choice.get("finish_reason"):
                        finish = choice["finish_reason"]
        except asyncio.CancelledError:
            finish = "cancelled"
        except (httpx.HTTPError, ValueError) as e:
            finish, error = "error", UpstreamError(f"upstream stream broke ({type(e).__name__})")
        finally:
            with contextlib.suppress(Exception):
                await resp.aclose()
            if calls and error is None:
                stream.tool_calls = [calls[i] for i in sorted(calls)]
            stream.finish(finish, prompt, completion, error)

    async def embed(self, inputs: list[str]) -> tuple[list[list[float]], int]:
        try:
            resp = await self.client.post(
                "embeddings", json={"model": self._model, "input": inputs}
            )
        except httpx.HTTPError as e:
            raise UpstreamError(
                f"upstream for {self.spec.name} unreachable ({type(e).__name__})"
            ) from None
        if resp.status_code != 200:
            raise _upstream_error(resp.status_code, resp.content)
        body = resp.json()
        data = sorted(body["data"], key=lambda d: d["index"])
        return [d["embedding"] for d in data], int(body.get("usage", {}).get("prompt_tokens", 0))


def _join_tool_call(calls: dict[int, dict[str, Any]], part: dict[str, Any]) -> None:
    """Add one streamed ``tool_calls`` delta: the first part of a call carries its id, type and
    name; later parts carry pieces of its ``arguments`` string."""
    index = int(part.get("index", len(calls)))
    call = calls.setdefault(
        index, {"id": "", "type": "function", "function": {"name": "", "arguments": ""}}
    )
    call["id"] = part.get("id") or call["id"]
    call["type"] = part.get("type") or call["type"]
    function = part.get("function") or {}
    call["function"]["name"] += function.get("name") or ""
    call["function"]["arguments"] += function.get("arguments") or ""
