"""Benchmark constrained decoding: how often the bundled model's output is valid, with and without.

Starts the model service (standalone, on a free port) and sends the same sampled requests
(temperature 1, a seed and a prompt each) twice:

- JSON: the schema described in the prompt only, then also enforced with ``response_format``;
- tools: the tools described in the prompt only (``tool_choice: "none"``, the reply parsed for a
  ``<tool_call>``), then enforced with ``tool_choice: "required"``.

A reply is valid when it parses and validates against the schema (the tool's name is one of the
tools and its arguments validate). Also reports completion tokens/s for both, so the masking
cost is visible.

Usage::

    .venv/bin/python benchmarks/constrained.py -n 32

Writes a markdown table to stdout and JSON to ``benchmarks/results/constrained-<time>.json``.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx
import jsonschema

sys.path.insert(0, str(Path(__file__).resolve().parent))
from model_service import KEY, Service

from oraculo.models.constrained import parse_tool_calls

REPO = Path(__file__).resolve().parents[1]
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
TOOLS = [
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
    }
]
PROMPTS = [
    "Invent a person who lives in Portugal.",
    "Describe my neighbour.",
    "What is the weather like in Lisbon?",
    "Is it raining in Oslo, in fahrenheit?",
    "Tell me a joke about databases.",
    "Who are you?",
    "hello",
    "Summarise the French revolution.",
]


async def run_one(http: httpx.AsyncClient, body: dict[str, Any]) -> tuple[dict[str, Any], float]:
    t0 = time.monotonic()
    r = await http.post("/v1/chat/completions", json=body)
    r.raise_for_status()
    return r.json(), time.monotonic() - t0


def json_valid(reply: dict[str, Any]) -> bool:
    try:
        jsonschema.validate(json.loads(reply["choices"][0]["message"]["content"]), PERSON)
    except (ValueError, jsonschema.ValidationError, TypeError):
        return False
    return True


def tool_valid(reply: dict[str, Any]) -> bool:
    message = reply["choices"][0]["message"]
    calls = message.get("tool_calls")
    if calls is None:  # unconstrained: look for a call in the text
        _, parsed = parse_tool_calls(message.get("content") or "")
        calls = [c.model_dump() for c in parsed]
    if not calls:
        return False
    fn = calls[0]["function"]
    try:
        assert fn["name"] == "get_weather"
        jsonschema.validate(json.loads(fn["arguments"]), TOOLS[0]["function"]["parameters"])
    except (AssertionError, ValueError, jsonschema.ValidationError):
        return False
    return True


async def measure(
    http: httpx.AsyncClient, n: int, concurrency: int, make: Any, check: Any
) -> dict[str, Any]:
    sem = asyncio.Semaphore(concurrency)

    async def one(i: int) -> tuple[dict[str, Any], float]:
        async with sem:
            return await run_one(http, make(i))

    t0 = time.monotonic()
    results = await asyncio.gather(*(one(i) for i in range(n)))
    wall = time.monotonic() - t0
    tokens = sum(r["usage"]["completion_tokens"] for r, _ in results)
    valid = sum(1 for r, _ in results if check(r))
    return {"n": n, "valid": valid, "rate": valid / n, "tokens": tokens, "tok_s": tokens / wall}


async def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("-n", type=int, default=32, help="generations per case")
    p.add_argument("--concurrency", type=int, default=8)
    p.add_argument("--device", default="cpu")
    p.add_argument("--dtype", default="float32")
    p.add_argument("--threads", type=int, default=0)
    args = p.parse_args()
    args.streams = [args.concurrency]
    base = {"model": "smollm2", "temperature": 1.0, "max_tokens": 96}
    described = "Answer with JSON only, matching this schema: " + json.dumps(PERSON)

    def messages(i: int, system: str | None = None) -> list[dict[str, str]]:
        msgs = [{"role": "user", "content": PROMPTS[i % len(PROMPTS)]}]
        return [{"role": "system", "content": system}, *msgs] if system else msgs

    fmt = {"type": "json_schema", "json_schema": {"name": "person", "schema": PERSON}}
    tool_prompt = (
        "You can call this tool. To call it, write "
        '<tool_call>{"name": "get_weather", "arguments": {...}}</tool_call>\n'
        + json.dumps(TOOLS[0]["function"])
    )
    cases = {
        "json, schema in the prompt": (
            lambda i: {**base, "seed": i, "messages": messages(i, described)},
            json_valid,
        ),
        "json, response_format": (
            lambda i: {**base, "seed": i, "messages": messages(i), "response_format": fmt},
            json_valid,
        ),
        "tool call, tools in the prompt": (
            lambda i: {**base, "seed": i, "messages": messages(i, tool_prompt)},
            tool_valid,
        ),
        "tool call, tool_choice required": (
            lambda i: {
                **base,
                "seed": i,
                "messages": messages(i),
                "tools": TOOLS,
                "tool_choice": "required",
                "parallel_tool_calls": False,
            },
            tool_valid,
        ),
    }
    out: dict[str, Any] = {}
    with tempfile.TemporaryDirectory() as tmp:
        svc = Service(args, Path(tmp))
        try:
            await svc.wait_ready()
            headers = {"Authorization": f"Bearer {KEY}"}
            async with httpx.AsyncClient(base_url=svc.url, headers=headers, timeout=600) as http:
                for name, (make, check) in cases.items():
                    out[name] = await measure(http, args.n, args.concurrency, make, check)
        finally:
            svc.stop()
    print("| case | valid | rate | completion tok/s |\n| --- | --- | --- | --- |")
    for name, r in out.items():
        print(f"| {name} | {r['valid']}/{r['n']} | {r['rate']:.0%} | {r['tok_s']:.1f} |")
    results = REPO / "benchmarks" / "results"
    results.mkdir(exist_ok=True)
    path = results / f"constrained-{time.strftime('%Y%m%d-%H%M%S')}.json"
    path.write_text(json.dumps({"args": vars(args), "results": out}, indent=2))
    print(f"\nwrote {path}")


if __name__ == "__main__":
    asyncio.run(main())
