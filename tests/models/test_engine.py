"""Continuous batching, cancellation on disconnect, the bounded queue and rate limits, over HTTP."""

from __future__ import annotations

import asyncio
import json
import time

import httpx
import openai

from .conftest import ALICE, BOB, LIMITED, STUDENT1, STUDENT2, ModelServer, assert_envelope, bearer

PROMPTS = [
    "Write a short poem about the sea.",
    "Explain what a python list is.",
    "Give me three tips for sleeping well.",
    "Describe a cat in two sentences.",
]


async def test_concurrent_streams_share_forward_passes(
    server: ModelServer, client: openai.AsyncOpenAI
) -> None:
    await server.wait_idle()
    before = await server.chat_stats()

    async def one(prompt: str) -> int:
        stream = await client.chat.completions.create(
            model="smollm2",
            messages=[{"role": "user", "content": prompt}],
            temperature=0,
            max_tokens=24,
            stream=True,
            stream_options={"include_usage": True},
        )
        usage = None
        async for chunk in stream:
            usage = chunk.usage or usage
        assert usage is not None
        return usage.completion_tokens

    completions = await asyncio.gather(*(one(p) for p in PROMPTS))
    after = await server.wait_idle()
    steps = after["decode_steps"] - before["decode_steps"]
    # run one after another, each token past the first costs one decode step of its own
    sequential = sum(n - 1 for n in completions)
    assert after["max_batch_seen"] >= 2
    assert steps < sequential, (steps, completions)


async def test_joining_a_running_batch(server: ModelServer, client: openai.AsyncOpenAI) -> None:
    """A request that arrives mid-generation is served before the first one finishes."""
    long = asyncio.create_task(
        client.chat.completions.create(
            model="smollm2",
            messages=[{"role": "user", "content": PROMPTS[0]}],
            temperature=0,
            max_tokens=60,
        )
    )

    async def started() -> bool:
        return (await server.chat_stats())["running"] >= 1

    from tests.harness import wait_for

    await wait_for(started, 60, "the first sequence to run", 0.02)
    short = await client.chat.completions.create(
        model="smollm2", messages=[{"role": "user", "content": "hi"}], temperature=0, max_tokens=3
    )
    assert short.usage is not None and short.usage.completion_tokens <= 3
    assert not long.done()
    r = await long
    assert r.usage is not None and r.usage.completion_tokens > 3
    await server.wait_idle()


async def test_client_disconnect_frees_its_slot(server: ModelServer) -> None:
    await server.wait_idle()
    before = await server.chat_stats()
    body = {
        "model": "smollm2",
        "messages": [{"role": "user", "content": PROMPTS[1]}],
        "max_tokens": 1000,
        "stream": True,
    }
    async with httpx.AsyncClient(base_url=server.url, timeout=60) as http:
        async with http.stream(
            "POST", "/v1/chat/completions", json=body, headers=bearer(ALICE)
        ) as r:
            assert r.status_code == 200
            lines = r.aiter_lines()
            async for line in lines:
                if line.startswith("data: ") and '"content":""' not in line:
                    break  # one real token arrived: hang up
    after = await server.wait_idle(timeout=30)
    assert after["sequences_cancelled"] == before["sequences_cancelled"] + 1
    assert after["tokens_generated"] - before["tokens_generated"] < 1000


async def test_queue_bound_gives_503(server: ModelServer) -> None:
    """max_batch_size 4 + max_waiting 2: the 7th and later concurrent requests are refused."""
    await server.wait_idle()
    body = {
        "model": "smollm2",
        "messages": [{"role": "user", "content": PROMPTS[2]}],
        "max_tokens": 200,
        "stream": True,
    }
    async with httpx.AsyncClient(base_url=server.url, timeout=60) as http:
        opened = []
        refused = []
        for _ in range(9):
            cm = http.stream("POST", "/v1/chat/completions", json=body, headers=bearer(BOB))
            r = await cm.__aenter__()
            if r.status_code == 200:
                opened.append(cm)
            else:
                await r.aread()
                refused.append(r)
                await cm.__aexit__(None, None, None)
        # 4 running + 2 waiting fit (one more if a short answer already finished); the rest do not
        assert 6 <= len(opened) < 9 and refused
        for r in refused:
            err = assert_envelope(r, 503)
            assert err["code"] == "overloaded"
            assert int(r.headers["retry-after"]) >= 1
        for cm in opened:
            await cm.__aexit__(None, None, None)  # hang up: every slot must come back
    stats = await server.wait_idle(timeout=60)
    assert stats["running"] == 0


async def test_rate_limit_429_with_retry_after(http: httpx.AsyncClient) -> None:
    body = {"model": "minilm", "input": "hello"}
    for _ in range(2):
        r = await http.post("/v1/embeddings", json=body, headers=bearer(LIMITED))
        assert r.status_code == 200, r.text
    r = await http.post("/v1/embeddings", json=body, headers=bearer(LIMITED))
    err = assert_envelope(r, 429)
    assert err["code"] == "rate_limit_exceeded"
    assert 1 <= int(r.headers["retry-after"]) <= 60
    # other users are not affected
    assert (await http.post("/v1/embeddings", json=body, headers=bearer(ALICE))).status_code == 200


async def test_group_limit_is_shared_by_members(http: httpx.AsyncClient) -> None:
    body = {"model": "minilm", "input": "hello"}
    for key in (STUDENT1, STUDENT2, STUDENT1):
        assert (
            await http.post("/v1/embeddings", json=body, headers=bearer(key))
        ).status_code == 200
    r = await http.post("/v1/embeddings", json=body, headers=bearer(STUDENT2))
    err = assert_envelope(r, 429)
    assert "group cohort" in err["message"]


async def test_openai_client_sees_rate_limit(server: ModelServer) -> None:
    async with openai.AsyncOpenAI(base_url=server.v1, api_key=LIMITED, max_retries=0) as c:
        try:
            for _ in range(3):
                await c.embeddings.create(model="minilm", input="x")
        except openai.RateLimitError as e:
            assert e.response.headers["retry-after"]
        else:
            raise AssertionError("no 429")


async def test_stream_after_200_ends_cleanly_when_finished(http: httpx.AsyncClient) -> None:
    body = {
        "model": "smollm2",
        "messages": [{"role": "user", "content": "hi"}],
        "max_tokens": 2,
        "stream": True,
        "stream_options": {"include_usage": True},
    }
    t0 = time.monotonic()
    r = await http.post("/v1/chat/completions", json=body, headers=bearer(ALICE))
    events = [e[6:] for e in r.text.split("\n\n") if e]
    assert events[-1] == "[DONE]"
    usage = json.loads(events[-2])["usage"]
    assert usage["completion_tokens"] <= 2
    assert time.monotonic() - t0 < 30
