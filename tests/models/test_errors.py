"""Bad input, bad credentials, unknown routes: OpenAI's envelope, proper status, no stuck slot."""

from __future__ import annotations

import json
from typing import Any

import httpx
import openai
import pytest

from .conftest import ALICE, ModelServer, assert_envelope, bearer

MSG = [{"role": "user", "content": "hi"}]


def chat(**kw: Any) -> bytes:
    return json.dumps({"model": "smollm2", "messages": MSG, **kw}).encode()


BAD_CHAT = {
    "malformed json": (b'{"model": "smollm2", "messages": [', 400, None),
    "invalid utf-8": (
        b'{"model": "smollm2", "messages": [{"role": "user", "content": "\xff\xfe"}]}',
        400,
        None,
    ),
    "not an object": (b'["model"]', 400, None),
    "empty body": (b"", 400, None),
    "unknown model": (json.dumps({"model": "gpt-17", "messages": MSG}).encode(), 404, "model"),
    "embedding model for chat": (
        json.dumps({"model": "minilm", "messages": MSG}).encode(),
        404,
        "model",
    ),
    "missing model": (json.dumps({"messages": MSG}).encode(), 400, "model"),
    "messages not a list": (
        json.dumps({"model": "smollm2", "messages": "hi"}).encode(),
        400,
        "messages",
    ),
    "empty messages": (chat(messages=[]), 400, "messages"),
    "bad role": (chat(messages=[{"role": "wizard", "content": "x"}]), 400, "messages.0.role"),
    "content wrong type": (chat(messages=[{"role": "user", "content": 5}]), 400, None),
    "temperature string": (chat(temperature="hot"), 400, "temperature"),
    "temperature out of range": (chat(temperature=7), 400, "temperature"),
    "top_p zero": (chat(top_p=0), 400, "top_p"),
    "max_tokens string": (chat(max_tokens="lots"), 400, "max_tokens"),
    "max_tokens negative": (chat(max_tokens=-1), 400, "max_tokens"),
    "absurd max_tokens": (chat(max_tokens=10**12), 400, "max_tokens"),
    "n > 1": (chat(n=3), 400, "n"),
    "stream not bool": (chat(stream="yes"), 400, "stream"),
    "empty stop": (chat(stop=[""]), 400, "stop"),
    "too many stops": (chat(stop=["a", "b", "c", "d", "e"]), 400, "stop"),
    "prompt too long": (
        chat(messages=[{"role": "user", "content": "hello " * 3000}]),
        400,
        "messages",
    ),
    "prompt + max_tokens too long": (
        chat(messages=[{"role": "user", "content": "hello " * 1500}], max_tokens=1000),
        400,
        "messages",
    ),
}


@pytest.mark.parametrize("body,status,param", BAD_CHAT.values(), ids=BAD_CHAT.keys())
async def test_bad_chat_input(
    http: httpx.AsyncClient, body: bytes, status: int, param: str | None
) -> None:
    for stream in (False, True):
        data = body
        if stream and b'"stream"' in body:
            continue
        if stream and body.startswith(b"{") and body.endswith(b"}"):
            data = body[:-1] + b', "stream": true}'
        r = await http.post("/v1/chat/completions", content=data, headers=bearer(ALICE))
        err = assert_envelope(r, status)
        if param is not None:
            assert err["param"] == param


async def test_bad_input_leaves_no_stuck_slot(server: ModelServer) -> None:
    stats = await server.wait_idle()
    assert stats["running"] == 0 and stats["waiting"] == 0


async def test_context_length_message(http: httpx.AsyncClient) -> None:
    body = chat(messages=[{"role": "user", "content": "hello " * 3000}])
    err = assert_envelope(
        await http.post("/v1/chat/completions", content=body, headers=bearer(ALICE)), 400
    )
    assert err["code"] == "context_length_exceeded"
    assert "maximum context length is 2048 tokens" in err["message"]


BAD_EMBED = {
    "no input": ({"model": "minilm"}, 400),
    "empty list": ({"model": "minilm", "input": []}, 400),
    "numbers": ({"model": "minilm", "input": [1, 2]}, 400),
    "unknown model": ({"model": "nope", "input": "x"}, 404),
    "chat model": ({"model": "smollm2", "input": "x"}, 404),
    "too long": ({"model": "minilm", "input": "word " * 600}, 400),
    "dimensions": ({"model": "minilm", "input": "x", "dimensions": 8}, 400),
    "bad format": ({"model": "minilm", "input": "x", "encoding_format": "hex"}, 400),
}


@pytest.mark.parametrize("body,status", BAD_EMBED.values(), ids=BAD_EMBED.keys())
async def test_bad_embedding_input(
    http: httpx.AsyncClient, body: dict[str, Any], status: int
) -> None:
    assert_envelope(await http.post("/v1/embeddings", json=body, headers=bearer(ALICE)), status)


@pytest.mark.parametrize(
    "headers",
    [{}, {"Authorization": "Bearer sk-wrong"}, {"Authorization": "Basic YWxpY2U6eA=="}],
    ids=["missing", "wrong key", "not bearer"],
)
async def test_unauthenticated(http: httpx.AsyncClient, headers: dict[str, str]) -> None:
    for method, path in [
        ("GET", "/v1/models"),
        ("POST", "/v1/chat/completions"),
        ("POST", "/v1/embeddings"),
        ("GET", "/v1/usage"),
    ]:
        r = await http.request(method, path, headers=headers, content=chat())
        err = assert_envelope(r, 401)
        assert err["code"] == "invalid_api_key"


async def test_openai_client_maps_errors(server: ModelServer) -> None:
    async with openai.AsyncOpenAI(base_url=server.v1, api_key="sk-wrong", max_retries=0) as bad:
        with pytest.raises(openai.AuthenticationError):
            await bad.models.list()
    async with openai.AsyncOpenAI(base_url=server.v1, api_key=ALICE, max_retries=0) as c:
        with pytest.raises(openai.NotFoundError):
            await c.chat.completions.create(model="nope", messages=MSG)  # type: ignore[arg-type]
        with pytest.raises(openai.BadRequestError) as e:
            await c.chat.completions.create(model="smollm2", messages=[])
        assert e.value.param == "messages"


async def test_unknown_route_and_method(http: httpx.AsyncClient) -> None:
    assert_envelope(await http.get("/v1/nothing-here", headers=bearer(ALICE)), 404)
    assert_envelope(await http.get("/v1/chat/completions", headers=bearer(ALICE)), 405)
    assert_envelope(await http.delete("/v1/models", headers=bearer(ALICE)), 405)


async def test_security_headers(http: httpx.AsyncClient) -> None:
    for r in [
        await http.get("/health"),
        await http.get("/v1/models", headers=bearer(ALICE)),
        await http.get("/v1/models"),
    ]:
        assert r.headers["x-content-type-options"] == "nosniff"
        assert r.headers["cache-control"] == "no-store"
