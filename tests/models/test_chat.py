"""Chat completions and embeddings through the official OpenAI client and raw HTTP."""

from __future__ import annotations

import asyncio
import json

import httpx
import openai

from .conftest import ALICE, KEYS, ModelServer, bearer

QUESTION = [{"role": "user", "content": "What is the capital of France?"}]


async def test_models_list(client: openai.AsyncOpenAI) -> None:
    models = [m.id async for m in client.models.list()]
    assert models == ["smollm2-135m-instruct", "all-minilm-l6-v2"]
    card = await client.models.retrieve("smollm2")
    assert card.id == "smollm2-135m-instruct"


async def test_chat_non_stream(client: openai.AsyncOpenAI) -> None:
    r = await client.chat.completions.create(
        model="smollm2", messages=QUESTION, temperature=0, max_tokens=24
    )
    assert r.object == "chat.completion"
    assert r.model == "smollm2-135m-instruct"
    assert "Paris" in (r.choices[0].message.content or "")
    assert r.choices[0].finish_reason in ("stop", "length")
    assert r.usage is not None
    assert r.usage.prompt_tokens > 5
    assert 0 < r.usage.completion_tokens <= 24
    assert r.usage.total_tokens == r.usage.prompt_tokens + r.usage.completion_tokens


async def test_chat_stream_with_usage(client: openai.AsyncOpenAI) -> None:
    stream = await client.chat.completions.create(
        model="smollm2",
        messages=QUESTION,
        temperature=0,
        max_tokens=24,
        stream=True,
        stream_options={"include_usage": True},
    )
    chunks = [c async for c in stream]
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert "Paris" in text
    assert chunks[0].choices[0].delta.role == "assistant"
    finals = [c for c in chunks if c.choices and c.choices[0].finish_reason]
    assert len(finals) == 1
    last = chunks[-1]
    assert last.choices == [] and last.usage is not None
    assert last.usage.completion_tokens > 0
    # same answer as the non-streamed call: streaming only changes the transport
    r = await client.chat.completions.create(
        model="smollm2", messages=QUESTION, temperature=0, max_tokens=24
    )
    assert r.choices[0].message.content == text


async def test_sse_wire_format(http: httpx.AsyncClient) -> None:
    body = {"model": "smollm2", "messages": QUESTION, "max_tokens": 8, "stream": True}
    async with http.stream("POST", "/v1/chat/completions", json=body, headers=bearer(ALICE)) as r:
        assert r.status_code == 200
        assert r.headers["content-type"].startswith("text/event-stream")
        raw = (await r.aread()).decode()
    events = [e for e in raw.split("\n\n") if e]
    assert all(e.startswith("data: ") for e in events)
    assert events[-1] == "data: [DONE]"
    chunks = [json.loads(e[6:]) for e in events[:-1]]
    assert all(c["object"] == "chat.completion.chunk" for c in chunks)
    assert len({c["id"] for c in chunks}) == 1
    # no usage chunk unless asked for
    assert all("usage" not in c for c in chunks)


async def test_unset_sampling_follows_the_models_own_settings(
    server: ModelServer, client: openai.AsyncOpenAI
) -> None:
    """A request without temperature/top_p gets the model's recommended settings, not 1.0: the
    bundled GGUF recommends none and its generation config has ``do_sample`` false, so it is
    decoded greedily, as its own ``generate()`` would (oraculo.models.sampling)."""
    stats = await server.chat_stats()
    assert stats["sampling_defaults"] == {
        "temperature": 0.0,
        "top_p": 1.0,
        "top_k": 0,
        "source": "generation_config",
    }
    answers = [
        (await client.chat.completions.create(model="smollm2", messages=QUESTION, max_tokens=16))
        .choices[0]
        .message.content
        for _ in range(2)
    ]
    assert "Paris" in (answers[0] or "") and answers[0] == answers[1]
    hello = await client.chat.completions.create(
        model="smollm2",
        messages=[{"role": "user", "content": "Say hello in three words."}],
        max_tokens=24,
    )
    # no greeting from this 135M model at any setting tried (greedy: "Alejandro, a wise and just
    # soul..."), but words, not the byte soup that temperature 1 gave
    text = hello.choices[0].message.content or ""
    assert text and "\ufffd" not in text and sum(c.isalpha() for c in text) > len(text) / 2


async def test_stop_and_seed(client: openai.AsyncOpenAI) -> None:
    r = await client.chat.completions.create(
        model="smollm2", messages=QUESTION, temperature=0, max_tokens=24, stop=["Paris"]
    )
    content = r.choices[0].message.content or ""
    assert "Paris" not in content and r.choices[0].finish_reason == "stop"

    async def sampled(seed: int) -> str:
        r = await client.chat.completions.create(
            model="smollm2",
            messages=[{"role": "user", "content": "Tell me a short story."}],
            temperature=1.0,
            top_p=0.9,
            seed=seed,
            max_tokens=16,
        )
        return r.choices[0].message.content or ""

    a, b = await asyncio.gather(sampled(7), sampled(7))
    assert a == b  # a seed makes sampling reproducible, even when batched with another stream


async def test_embeddings(client: openai.AsyncOpenAI) -> None:
    # the client asks for base64 by default and decodes it
    r = await client.embeddings.create(
        model="minilm", input=["The cat sat on the mat.", "A cat is sitting on a rug.", "Tax law."]
    )
    assert [d.index for d in r.data] == [0, 1, 2]
    vecs = [d.embedding for d in r.data]
    assert all(len(v) == 384 for v in vecs)

    def cos(a: list[float], b: list[float]) -> float:
        return sum(x * y for x, y in zip(a, b, strict=True))

    assert cos(vecs[0], vecs[1]) > cos(vecs[0], vecs[2]) + 0.3
    assert r.usage.prompt_tokens > 10
    f = await client.embeddings.create(
        model="all-minilm-l6-v2", input="hi", encoding_format="float"
    )
    assert len(f.data) == 1 and len(f.data[0].embedding) == 384


async def test_health_is_public_and_secret_free(server: ModelServer) -> None:
    async with httpx.AsyncClient() as c:
        r = await c.get(f"{server.url}/health")
    assert r.status_code == 200
    text = r.text
    assert not any(key in text for key in KEYS)
    assert r.json()["status"] == "ok"


async def test_the_chat_model_runs_in_bf16_where_the_cpu_multiplies_it(
    server: ModelServer,
) -> None:
    import torch

    from oraculo.models.backends.local import BF16_CPU_FLAGS, _cpu_flags, model_dtype

    bf16 = BF16_CPU_FLAGS & _cpu_flags()
    stats = await server.chat_stats()
    assert stats["dtype"] == ("bfloat16" if bf16 else "float32")
    assert model_dtype("auto", "cpu", frozenset({"avx512f", "avx512_bf16"})) == torch.bfloat16
    assert model_dtype("auto", "cpu", frozenset({"amx_bf16"})) == torch.bfloat16
    assert model_dtype("auto", "cpu", frozenset({"avx512f", "avx2"})) == torch.float32
    assert model_dtype("auto", "cuda", frozenset({"avx512_bf16"})) == torch.float32
    assert model_dtype("float32", "cpu", frozenset({"avx512_bf16"})) == torch.float32
    assert model_dtype("float16", "cpu", frozenset()) == torch.float16
