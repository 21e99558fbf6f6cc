"""Upstream models: a second service forwards to the first, keeping the upstream key server-side."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from typing import Any

import httpx
import openai
import pytest

from oraculo.models.backends.upstream import _join_tool_call
from tests.harness import wait_for

from .conftest import ADMIN, ALICE, GATEWAY, ModelServer, assert_envelope, bearer


@pytest.fixture(scope="module")
async def gateway(
    server: ModelServer, tmp_path_factory: pytest.TempPathFactory
) -> AsyncIterator[ModelServer]:
    config: dict[str, Any] = {
        "ModelServiceApp": {
            "models": [
                {
                    "name": "remote-chat",
                    "kind": "chat",
                    "source": server.v1,
                    "upstream_model": "smollm2",
                    "api_key_env": "UPSTREAM_KEY",
                    "aliases": ["rc"],
                },
                {
                    "name": "remote-embed",
                    "kind": "embedding",
                    "source": server.v1,
                    "upstream_model": "minilm",
                    "api_key_env": "UPSTREAM_KEY",
                },
                {
                    "name": "broken",
                    "kind": "chat",
                    "source": server.v1,
                    "upstream_model": "nope",
                    "api_key_env": "UPSTREAM_KEY",
                },
            ]
        }
    }
    keys = {ALICE: {"name": "alice"}}
    srv = ModelServer(
        tmp_path_factory.mktemp("gateway"), config, keys, env={"UPSTREAM_KEY": GATEWAY}
    )
    await srv.start(timeout=60)
    try:
        yield srv
    finally:
        srv.stop()


async def test_forwarded_chat_and_embeddings(gateway: ModelServer, server: ModelServer) -> None:
    async with openai.AsyncOpenAI(base_url=gateway.v1, api_key=ALICE, max_retries=0) as c:
        r = await c.chat.completions.create(
            model="rc",
            messages=[{"role": "user", "content": "What is the capital of France?"}],
            temperature=0,
            max_tokens=16,
        )
        assert r.model == "remote-chat"
        assert "Paris" in (r.choices[0].message.content or "")
        assert r.usage is not None and r.usage.prompt_tokens > 0

        stream = await c.chat.completions.create(
            model="remote-chat",
            messages=[{"role": "user", "content": "Say hello."}],
            temperature=0,
            max_tokens=8,
            stream=True,
            stream_options={"include_usage": True},
        )
        chunks = [ch async for ch in stream]
        assert chunks[-1].usage is not None and chunks[-1].usage.completion_tokens > 0
        assert "".join(ch.choices[0].delta.content or "" for ch in chunks if ch.choices)

        e = await c.embeddings.create(model="remote-embed", input=["a", "b"])
        assert len(e.data) == 2 and len(e.data[0].embedding) == 384

    # the gateway meters alice; the upstream saw only the gateway's key
    async with httpx.AsyncClient(timeout=30) as http:

        async def metered() -> bool:
            r = await http.get(f"{gateway.url}/v1/usage", headers=bearer(ALICE))
            return len(r.json()["data"]) >= 3

        await wait_for(metered, 10, "gateway usage rows")
        r = await http.get(
            f"{server.url}/v1/usage", params={"user": "gateway"}, headers=bearer(ADMIN)
        )
        assert r.json()["totals"], "the upstream recorded the gateway's calls"
        health = (await http.get(f"{gateway.url}/health")).text
        assert GATEWAY not in health


async def test_upstream_errors_pass_through_as_envelopes(gateway: ModelServer) -> None:
    async with httpx.AsyncClient(base_url=gateway.url, timeout=30) as http:
        r = await http.post(
            "/v1/chat/completions",
            headers=bearer(ALICE),
            json={"model": "broken", "messages": [{"role": "user", "content": "x"}]},
        )
        assert_envelope(r, 404)
        r = await http.post(
            "/v1/chat/completions",
            headers=bearer(ALICE),
            json={
                "model": "rc",
                "messages": [{"role": "user", "content": "x"}],
                "max_tokens": 10**9,
            },
        )
        assert_envelope(r, 400)


ADD_TOOL = {
    "type": "function",
    "function": {
        "name": "add",
        "description": "Add two integers.",
        "parameters": {
            "type": "object",
            "properties": {"a": {"type": "integer"}, "b": {"type": "integer"}},
            "required": ["a", "b"],
        },
    },
}


async def test_upstream_tool_calls_come_through(gateway: ModelServer) -> None:
    """The upstream (our first service, constrained decoding) answers with tool calls: the
    gateway relays them as tool calls, whole and streamed, and the round trip goes on."""
    ask = [{"role": "user", "content": "What is 3 plus 4?"}]
    named = {"type": "function", "function": {"name": "add"}}
    async with openai.AsyncOpenAI(base_url=gateway.v1, api_key=ALICE, max_retries=0) as c:
        r = await c.chat.completions.create(
            model="remote-chat", messages=ask, tools=[ADD_TOOL], tool_choice=named,  # type: ignore[arg-type,list-item]
            temperature=0, max_tokens=40,
        )  # fmt: skip
        choice = r.choices[0]
        assert choice.finish_reason == "tool_calls", choice.message
        (call,) = choice.message.tool_calls or []
        assert call.function.name == "add" and call.id
        args = json.loads(call.function.arguments)
        assert set(args) == {"a", "b"}

        stream = await c.chat.completions.create(
            model="remote-chat", messages=ask, tools=[ADD_TOOL], tool_choice=named,  # type: ignore[arg-type,list-item]
            temperature=0, max_tokens=40, stream=True,
        )  # fmt: skip
        streamed: list[Any] = []
        finish = None
        async for chunk in stream:
            for ch in chunk.choices:
                streamed.extend(ch.delta.tool_calls or [])
                finish = ch.finish_reason or finish
        assert finish == "tool_calls"
        assert [(s.function.name, json.loads(s.function.arguments)) for s in streamed] == [
            ("add", args)
        ]

        r = await c.chat.completions.create(
            model="remote-chat",
            messages=[
                *ask,
                {"role": "assistant", "content": None, "tool_calls": [call.model_dump()]},
                {"role": "tool", "tool_call_id": call.id, "content": "7"},
            ],  # type: ignore[list-item]
            tools=[ADD_TOOL],  # type: ignore[list-item]
            tool_choice="none",
            temperature=0,
            max_tokens=16,
        )
        assert r.choices[0].message.tool_calls is None
        assert r.choices[0].finish_reason in ("stop", "length")


def test_streamed_tool_call_pieces_are_joined() -> None:
    """As vLLM and OpenAI stream them: id and name first, the arguments in pieces."""
    calls: dict[int, dict[str, Any]] = {}
    add = {"name": "add", "arguments": ""}
    parts = [
        {"index": 0, "id": "call_1", "type": "function", "function": add},
        {"index": 0, "function": {"arguments": '{"a": '}},
        {"index": 1, "id": "call_2", "type": "function", "function": {"name": "weather"}},
        {"index": 0, "function": {"arguments": '3, "b": 4}'}},
        {"index": 1, "function": {"arguments": '{"city": "Oslo"}'}},
    ]
    for part in parts:
        _join_tool_call(calls, part)
    assert [(c["id"], c["type"], c["function"]) for c in (calls[0], calls[1])] == [
        ("call_1", "function", {"name": "add", "arguments": '{"a": 3, "b": 4}'}),
        ("call_2", "function", {"name": "weather", "arguments": '{"city": "Oslo"}'}),
    ]
