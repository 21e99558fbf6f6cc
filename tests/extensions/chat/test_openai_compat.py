"""The user's ``/api/v1/chat/completions`` is OpenAI-compatible in full: structured output and
tool calls pass through to the model service, streamed and not, with the official ``openai``
client against the real hub (the bundled 135M model, constrained by the model service).
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from typing import Any

import jsonschema
import openai
import pytest

from tests.extensions.chat.test_chat import ask, assert_envelope, url
from tests.harness import HubClient, HubProcess, User, new_user

CAPITAL = {
    "type": "object",
    "properties": {
        "country": {"type": "string", "enum": ["France", "Peru", "Ecuador"]},
        "capital": {"type": "string", "enum": ["Paris", "Lima", "Quito"]},
    },
    "required": ["country", "capital"],
    "additionalProperties": False,
}
WEATHER: dict[str, Any] = {
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
}
ADD: dict[str, Any] = {
    "type": "function",
    "function": {
        "name": "add",
        "parameters": {
            "type": "object",
            "properties": {
                "a": {"type": "integer", "minimum": -99, "maximum": 99},
                "b": {"type": "integer", "minimum": -99, "maximum": 99},
            },
            "required": ["a", "b"],
        },
    },
}


@pytest.fixture(scope="module")
async def olga(models_hub: HubProcess) -> AsyncIterator[User]:
    client = HubClient(models_hub)
    user = await new_user(client, "olga")
    await user.spawn()
    yield user
    await user.client.aclose()
    await client.aclose()


@pytest.fixture
async def client(olga: User) -> AsyncIterator[openai.AsyncOpenAI]:
    base_url = f"{olga.client.hub.url}/user/{olga.name}/api/v1"
    async with openai.AsyncOpenAI(base_url=base_url, api_key=olga.token, max_retries=0) as c:
        yield c


async def test_json_schema_whole_and_streamed(client: openai.AsyncOpenAI) -> None:
    fmt: Any = {
        "type": "json_schema",
        "json_schema": {"name": "capital", "schema": CAPITAL, "strict": True},
    }
    messages: Any = [{"role": "user", "content": "What is the capital of Peru?"}]
    r = await client.chat.completions.create(
        model="smollm2", messages=messages, response_format=fmt, seed=7, max_tokens=48
    )
    assert r.choices[0].finish_reason == "stop", r.choices[0].message
    whole = json.loads(r.choices[0].message.content or "")
    jsonschema.validate(whole, CAPITAL)
    assert r.model_extra and r.model_extra["oraculo"]["conversation_id"] is None  # not stored

    stream = await client.chat.completions.create(
        model="smollm2",
        messages=messages,
        response_format=fmt,
        seed=7,
        max_tokens=48,
        stream=True,
    )
    text, finish = "", None
    async for chunk in stream:
        for choice in chunk.choices:
            text += choice.delta.content or ""
            finish = choice.finish_reason or finish
    assert finish == "stop"
    jsonschema.validate(json.loads(text), CAPITAL)

    # json_object: any object that parses
    r = await client.chat.completions.create(
        model="smollm2",
        messages=[{"role": "user", "content": "Give me a JSON object with a colour."}],
        response_format={"type": "json_object"},
        seed=1,
        max_tokens=64,
    )
    content = r.choices[0].message.content or ""
    assert content.startswith("{")
    if r.choices[0].finish_reason == "stop":
        assert isinstance(json.loads(content), dict)


async def test_tool_call_whole_streamed_and_round_trip(client: openai.AsyncOpenAI) -> None:
    r = await client.chat.completions.create(
        model="smollm2",
        messages=[{"role": "user", "content": "What is the weather like in Lima?"}],
        tools=[WEATHER, ADD],
        tool_choice="required",
        parallel_tool_calls=False,
        seed=3,
        max_tokens=64,
    )
    choice = r.choices[0]
    assert choice.finish_reason == "tool_calls", choice.message
    calls = choice.message.tool_calls or []
    assert len(calls) == 1 and calls[0].type == "function"
    params = {"get_weather": WEATHER, "add": ADD}[calls[0].function.name]["function"]
    jsonschema.validate(json.loads(calls[0].function.arguments), params["parameters"])

    stream = await client.chat.completions.create(
        model="smollm2",
        messages=[{"role": "user", "content": "What is 3 plus 4?"}],
        tools=[WEATHER, ADD],
        tool_choice={"type": "function", "function": {"name": "add"}},
        seed=3,
        max_tokens=40,
        stream=True,
    )
    # a call streams as OpenAI's does: index, id and name first, then argument fragments
    pieces: list[Any] = []
    finish = None
    async for chunk in stream:
        for c in chunk.choices:
            for d in c.delta.tool_calls or []:
                if d.index == len(pieces):
                    pieces.append(d)
                elif d.function and d.function.arguments:
                    pieces[d.index].function.arguments += d.function.arguments
            finish = c.finish_reason or finish
    assert finish == "tool_calls"
    assert [p.function.name for p in pieces] == ["add"]
    args = pieces[0].function.arguments
    jsonschema.validate(json.loads(args), ADD["function"]["parameters"])

    # The call and its result go back as messages; the model answers in text.
    r = await client.chat.completions.create(
        model="smollm2",
        messages=[
            {"role": "user", "content": "What is 3 plus 4?"},
            {
                "role": "assistant",
                "content": None,
                "tool_calls": [
                    {
                        "id": pieces[0].id,
                        "type": "function",
                        "function": {"name": "add", "arguments": args},
                    }
                ],
            },
            {"role": "tool", "tool_call_id": pieces[0].id, "content": "7"},
        ],
        tools=[ADD],
        tool_choice="none",
        seed=3,
        max_tokens=12,
    )
    assert r.choices[0].finish_reason in ("stop", "length")
    assert r.choices[0].message.tool_calls is None


async def test_stored_tool_calls_replay_in_the_conversation(olga: User) -> None:
    body = ask(
        "Add 20 and 22.",
        tools=[ADD],
        tool_choice="required",
        max_tokens=40,
        seed=5,
        store=True,
    )
    r = await olga.api("POST", url(olga, "api/v1/chat/completions"), json=body)
    assert r.status_code == 200, r.text
    cid = r.json()["oraculo"]["conversation_id"]
    call = r.json()["choices"][0]["message"]["tool_calls"][0]
    r = await olga.api("GET", url(olga, f"api/v1/chat/conversations/{cid}"))
    stored = r.json()["messages"]
    assert stored[-1]["oraculo"]["tool_calls"][0]["id"] == call["id"]
    # The tool's answer continues the conversation: the stored call goes back with it.
    more = {
        "messages": [{"role": "tool", "tool_call_id": call["id"], "content": "42"}],
        "conversation_id": cid,
        "max_tokens": 8,
        "seed": 5,
    }
    r = await olga.api("POST", url(olga, "api/v1/chat/completions"), json=more)
    assert r.status_code == 200, r.text
    r = await olga.api("GET", url(olga, f"api/v1/chat/conversations/{cid}"))
    stored = r.json()["messages"]
    roles = [(m["role"], (m.get("oraculo") or {}).get("tool_call_id")) for m in stored]
    assert roles[:3] == [("user", None), ("assistant", None), ("tool", call["id"])]


async def test_bad_tools_and_formats_are_400(olga: User, client: openai.AsyncOpenAI) -> None:
    named_unknown = {"type": "function", "function": {"name": "nope"}}
    cases: list[dict[str, Any]] = [
        ask("hi", tool_choice="required"),
        ask("hi", tools=[ADD], tool_choice=named_unknown),
        ask("hi", tools=[ADD, ADD]),
        ask("hi", tools=[{"type": "function", "function": {"name": "bad name!"}}]),
        ask("hi", tools=[{"type": "retrieval"}]),
        ask("hi", tools="add"),
        ask("hi", response_format={"type": "json_schema"}),
        ask("hi", response_format={"type": "yaml"}),
        ask("hi", tools=[ADD], response_format={"type": "json_object"}),
        ask("hi", parallel_tool_calls="no"),
        {"messages": [{"role": "tool", "content": "7"}]},
        {"messages": [{"role": "user", "content": "hi", "tool_calls": []}]},
        {"messages": [{"role": "assistant", "tool_calls": [{"id": "x", "function": {}}]}]},
    ]
    for body in cases:
        r = await olga.api("POST", url(olga, "api/v1/chat/completions"), json=body)
        assert_envelope(r, 400, "invalid_request")
    with pytest.raises(openai.BadRequestError):
        await client.chat.completions.create(
            model="smollm2", messages=[{"role": "user", "content": "hi"}], tool_choice="required"
        )


async def test_another_users_token_gets_no_tool_call(olga: User, models_hub: HubProcess) -> None:
    client = HubClient(models_hub)
    try:
        other = await new_user(client, "oscar")
        body = ask("Add 1 and 2.", tools=[ADD], tool_choice="required")
        r = await other.api("POST", url(olga, "api/v1/chat/completions"), json=body)
        assert r.status_code == 403, r.text
        await other.client.aclose()
    finally:
        await client.aclose()
