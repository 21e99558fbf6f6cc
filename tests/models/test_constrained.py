"""Constrained decoding on the bundled 135M model: JSON schemas and tool calls that always parse.

Through the real model service with the official OpenAI client. Validity is measured over many
sampled generations (temperature 1, a different seed and prompt each), not one lucky greedy one.
"""

from __future__ import annotations

import asyncio
import json
from typing import Any

import httpx
import jsonschema
import openai

from .conftest import ALICE, ModelServer, assert_envelope

PERSON = {
    "type": "object",
    "properties": {
        "name": {"type": "string", "maxLength": 24},
        "age": {"type": "integer", "minimum": 0, "maximum": 120},
        "city": {"type": "string", "enum": ["Lisbon", "Porto", "Madrid", "Paris"]},
    },
    "required": ["name", "age", "city"],
    "additionalProperties": False,
}
REVIEW = {
    "type": "object",
    "properties": {
        "sentiment": {"type": "string", "enum": ["positive", "negative", "neutral"]},
        "score": {"type": "number", "minimum": 0, "maximum": 1},
        "tags": {
            "type": "array",
            "items": {"type": "string", "maxLength": 12},
            "minItems": 1,
            "maxItems": 3,
        },
    },
    "required": ["sentiment", "score", "tags"],
    "additionalProperties": False,
}
PROMPTS = [
    "Invent a person who lives in Portugal.",
    "Describe my neighbour.",
    "Who won the football match yesterday?",
    "Write a review of a cheap umbrella.",
    "The soup was cold and the waiter was rude.",
    "Tell me a joke about databases.",
    "Summarise the French revolution.",
    "I loved this book!",
]
TOOLS: list[dict[str, Any]] = [
    {
        "type": "function",
        "function": {
            "name": "get_weather",
            "description": "Current weather in a city.",
            "parameters": {
                "type": "object",
                "properties": {
                    "city": {"type": "string", "maxLength": 20},
                    "unit": {"type": "string", "enum": ["celsius", "fahrenheit"]},
                },
                "required": ["city", "unit"],
            },
        },
    },
    {
        "type": "function",
        "function": {
            "name": "add",
            "description": "Add two integers.",
            "parameters": {
                "type": "object",
                "properties": {
                    "a": {"type": "integer", "minimum": -999, "maximum": 999},
                    "b": {"type": "integer", "minimum": -999, "maximum": 999},
                },
                "required": ["a", "b"],
            },
        },
    },
]
PARAMS = {t["function"]["name"]: t["function"]["parameters"] for t in TOOLS}


async def _gather(n: int, make: Any, limit: int = 4) -> list[Any]:
    """Run ``make(i)`` for i < n, at most ``limit`` at once (the test server's batch size)."""
    sem = asyncio.Semaphore(limit)

    async def one(i: int) -> Any:
        async with sem:
            return await make(i)

    return await asyncio.gather(*(one(i) for i in range(n)))


async def test_json_schema_is_always_valid(client: openai.AsyncOpenAI) -> None:
    schemas = [("person", PERSON), ("review", REVIEW)]

    async def make(i: int) -> tuple[dict[str, Any], str, str]:
        name, schema = schemas[i % 2]
        r = await client.chat.completions.create(
            model="smollm2",
            messages=[{"role": "user", "content": PROMPTS[i % len(PROMPTS)]}],
            response_format={
                "type": "json_schema",
                "json_schema": {"name": name, "schema": schema, "strict": True},
            },
            temperature=1.0,
            seed=i,
            max_tokens=64,
        )
        choice = r.choices[0]
        return schema, choice.message.content or "", choice.finish_reason

    results = await _gather(32, make)
    valid = 0
    for schema, text, finish in results:
        assert finish == "stop", text
        jsonschema.validate(json.loads(text), schema)
        valid += 1
    print(f"json_schema: {valid}/{len(results)} valid")
    assert valid == 32


async def test_json_object(client: openai.AsyncOpenAI) -> None:
    async def make(i: int) -> tuple[str, str]:
        r = await client.chat.completions.create(
            model="smollm2",
            messages=[{"role": "user", "content": f"Give me a JSON object about {PROMPTS[i]}"}],
            response_format={"type": "json_object"},
            temperature=0.7,
            seed=i,
            max_tokens=96,
        )
        return r.choices[0].message.content or "", r.choices[0].finish_reason

    for text, finish in await _gather(2, make):
        if finish == "stop":  # any object: the model may ramble past max_tokens
            assert isinstance(json.loads(text), dict)
        else:
            assert finish == "length" and text.startswith("{")


async def test_required_tool_calls_are_always_valid(client: openai.AsyncOpenAI) -> None:
    questions = [
        "What is the weather like in Lisbon?",
        "Add 2 and 40.",
        "Is it raining in Oslo right now, in fahrenheit?",
        "What is 17 plus 25?",
        "hello",
        "Tell me about tools.",
    ]

    async def make(i: int) -> Any:
        r = await client.chat.completions.create(
            model="smollm2",
            messages=[{"role": "user", "content": questions[i % len(questions)]}],
            tools=TOOLS,  # type: ignore[arg-type]
            tool_choice="required",
            parallel_tool_calls=False,
            temperature=1.0,
            seed=100 + i,
            max_tokens=64,
        )
        return r.choices[0]

    choices = await _gather(12, make)
    for choice in choices:
        assert choice.finish_reason == "tool_calls", choice.message
        calls = choice.message.tool_calls
        assert calls and len(calls) == 1
        call = calls[0]
        assert call.type == "function" and call.id.startswith("call_")
        assert call.function.name in PARAMS
        jsonschema.validate(json.loads(call.function.arguments), PARAMS[call.function.name])
    print(f"tool calls: {len(choices)}/{len(choices)} valid")


async def test_named_tool_streamed_and_round_trip(client: openai.AsyncOpenAI) -> None:
    stream = await client.chat.completions.create(
        model="smollm2",
        messages=[{"role": "user", "content": "What is 3 plus 4?"}],
        tools=TOOLS,  # type: ignore[arg-type]
        tool_choice={"type": "function", "function": {"name": "add"}},
        temperature=0,
        max_tokens=40,
        stream=True,
    )
    calls, finish, _ = await _reassemble(stream)
    assert finish == "tool_calls"
    assert [c.function.name for c in calls] == ["add"]
    args = json.loads(calls[0].function.arguments)
    jsonschema.validate(args, PARAMS["add"])
    # the call and its result go back in as messages; the model then answers in text
    r = await client.chat.completions.create(
        model="smollm2",
        messages=[
            {"role": "user", "content": "What is 3 plus 4?"},
            {
                "role": "assistant",
                "content": None,
                "tool_calls": [
                    {
                        "id": calls[0].id,
                        "type": "function",
                        "function": {"name": "add", "arguments": calls[0].function.arguments},
                    }
                ],
            },
            {"role": "tool", "tool_call_id": calls[0].id, "content": "7"},
        ],
        tools=TOOLS,  # type: ignore[arg-type]
        tool_choice="none",
        temperature=0,
        max_tokens=16,
    )
    assert r.choices[0].finish_reason in ("stop", "length")
    assert r.choices[0].message.tool_calls is None


async def _reassemble(stream: Any) -> tuple[list[Any], str | None, list[tuple[int, int, str]]]:
    """The tool calls of a stream put back together as OpenAI's client users do (by ``index``),
    its finish reason, and each tool-call delta as (chunk number, index, arguments fragment)."""
    calls: dict[int, Any] = {}
    seen: list[tuple[int, int, str]] = []
    finish = None
    n = 0
    async for chunk in stream:
        n += 1
        for choice in chunk.choices:
            finish = choice.finish_reason or finish
            for d in choice.delta.tool_calls or []:
                seen.append((n, d.index, (d.function and d.function.arguments) or ""))
                if d.index not in calls:
                    assert d.id and d.function and d.function.name, "a call starts with id, name"
                    calls[d.index] = openai.types.chat.ChatCompletionMessageToolCall(
                        id=d.id,
                        type="function",
                        function={"name": d.function.name, "arguments": ""},  # type: ignore[arg-type]
                    )
                elif d.function and d.function.arguments:
                    calls[d.index].function.arguments += d.function.arguments
    assert sorted(calls) == list(range(len(calls)))
    return [calls[i] for i in sorted(calls)], finish, seen


async def test_tool_calls_stream_as_they_are_written(client: openai.AsyncOpenAI) -> None:
    """Streamed, a tool call arrives as OpenAI sends one: its index, id and name first, then its
    arguments in fragments as the model writes them, well before the stream ends; joined, they
    are exactly the arguments of the same request not streamed (temperature 0, seed)."""
    for choice_ in ("required", {"type": "function", "function": {"name": "get_weather"}}):
        body: Any = {
            "model": "smollm2",
            "messages": [{"role": "user", "content": "What's the weather in Lisbon, in celsius?"}],
            "tools": TOOLS,
            "tool_choice": choice_,
            "parallel_tool_calls": False,
            "temperature": 0,
            "seed": 7,
            "max_tokens": 60,
        }
        whole = await client.chat.completions.create(**body)
        expected = whole.choices[0].message.tool_calls
        assert expected and whole.choices[0].finish_reason == "tool_calls"
        stream = await client.chat.completions.create(**body, stream=True)
        calls, finish, seen = await _reassemble(stream)
        assert finish == "tool_calls"
        assert [(c.function.name, c.function.arguments) for c in calls] == [
            (c.function.name, c.function.arguments) for c in expected
        ]
        fragments = [s for s in seen if s[2]]
        assert len(fragments) >= 3, seen  # in pieces, not whole
        last_chunk = max(n for n, _, _ in seen)
        first_chunk = min(n for n, _, _ in seen)
        assert first_chunk < last_chunk  # the name came before the arguments were done
        print(f"{choice_}: {len(fragments)} fragments for {expected[0].function.arguments}")


async def test_non_streamed_tool_calls_unchanged(client: openai.AsyncOpenAI) -> None:
    """Not streamed, a reply's calls are one whole message, as before."""
    r = await client.chat.completions.create(
        model="smollm2",
        messages=[{"role": "user", "content": "What is 3 plus 4?"}],
        tools=TOOLS,  # type: ignore[arg-type]
        tool_choice={"type": "function", "function": {"name": "add"}},
        temperature=0,
        max_tokens=40,
    )
    calls = r.choices[0].message.tool_calls
    assert r.choices[0].finish_reason == "tool_calls" and calls and len(calls) == 1
    assert calls[0].id.startswith("call_") and calls[0].function.name == "add"
    jsonschema.validate(json.loads(calls[0].function.arguments), PARAMS["add"])
    assert r.choices[0].message.content is None


def test_streamed_arguments_are_canonical_json() -> None:
    """Whatever whitespace, escapes and number forms the text has, the fragments join to what
    json.dumps gives for it (the non-streamed ``arguments``)."""
    from oraculo.models.toolstream import ToolCallStream

    text = (
        'Sure. <tool_call>{ "name" : "f",\n "arguments":{"a" : 1.50, "b":[ true,null ,-2E1],'
        r' "c":"x\"y\u00e9\ud83d\ude00\n\/", "d" : {}}}</tool_call>'
    )
    for size in (1, 2, 3, 7, len(text)):
        ts = ToolCallStream()
        deltas = [d for i in range(0, len(text), size) for d in ts.feed(text[i : i + size])]
        assert deltas[0]["function"]["name"] == "f" and deltas[0]["id"].startswith("call_")
        joined = "".join(d["function"].get("arguments", "") for d in deltas)
        start = text.index('"arguments":') + len('"arguments":')
        args = json.loads(text[start : text.rindex("}</tool_call>")])
        assert joined == json.dumps(args, ensure_ascii=False), (size, joined)
        assert [c["function"]["arguments"] for c in ts.streamed()] == [joined]


async def test_bad_constraints_are_400(server: ModelServer) -> None:
    headers = {"Authorization": f"Bearer {ALICE}"}
    msgs = [{"role": "user", "content": "hi"}]
    bodies = [
        (
            {"tool_choice": {"type": "function", "function": {"name": "nope"}}, "tools": TOOLS},
            "tool_choice",
        ),
        ({"tool_choice": "required"}, "tool_choice"),
        ({"response_format": {"type": "json_schema"}}, "response_format.json_schema"),
        ({"response_format": {"type": "yaml"}}, "response_format.type"),
        (
            {"tools": [{"type": "function", "function": {"name": "bad name"}}]},
            "tools.0.function.name",
        ),
    ]
    async with httpx.AsyncClient(base_url=server.url, timeout=60) as c:
        for extra, param in bodies:
            r = await c.post(
                "/v1/chat/completions",
                headers=headers,
                json={"model": "smollm2", "messages": msgs, "max_tokens": 4, **extra},
            )
            assert assert_envelope(r, 400)["param"] == param
