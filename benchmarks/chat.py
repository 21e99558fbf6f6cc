"""Chat time to first token through the whole stack against the model service called directly.

One run starts a real hub with the model service (``tests.harness.HubProcess``), signs up a user,
spawns their server, and then alternates, request by request, between:

The user's workspace holds one note (indexed) and one memory, so retrieval does real work.

- ``stack``: ``POST /user/<name>/api/v1/chat`` through the hub's proxy: the extension resolves
  the model, loads/stores the conversation, assembles the context (memories and workspace
  passages when the memory feature is loaded: an embeddings call), and forwards to the model
  service through the proxy;
- ``stack, no retrieval``: the same with ``context: {"workspace": false}`` (no memory or
  workspace search): what the extra hop and the extension cost by themselves;
- ``direct (proxy)``: ``POST /services/models/v1/chat/completions`` through the hub's proxy with
  the user's token, with the messages the stack sends (system prompt + question);
- ``direct (port)``: the same request to the model service's own port, no proxy.

Time to first token is measured at the client, from sending the request to the first chunk
that carries text. All share the same prompt, ``max_tokens`` and greedy decoding, so the
difference is what the stack adds. Requests alternate so that machine noise hits all alike.

Usage::

    .venv/bin/python benchmarks/chat.py                  # 30 rounds
    .venv/bin/python benchmarks/chat.py --rounds 60 --no-store

Writes a markdown table to stdout and JSON to ``benchmarks/results/chat-<time>.json``.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from oraculo.extensions.chat.context import DEFAULT_SYSTEM_PROMPT  # noqa: E402
from tests.harness import HubClient, HubProcess, User, free_port, new_user, wait_for  # noqa: E402

QUESTIONS = [
    "What is the capital of France?",
    "Name a prime number larger than ten.",
    "What colour is the sky on a clear day?",
    "How many legs does a spider have?",
]


def pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


async def ttft(
    client: httpx.AsyncClient, url: str, body: dict[str, Any], auth: str, extra: dict[str, Any]
) -> float:
    start = time.perf_counter()
    async with client.stream(
        "POST", url, json={**body, "stream": True}, headers={"Authorization": auth}
    ) as r:
        if r.status_code != 200:
            raise RuntimeError(f"{url}: HTTP {r.status_code} {(await r.aread())[:300]!r}")
        first: float | None = None
        async for line in r.aiter_lines():
            if line.startswith("data:") and line[5:].strip() != "[DONE]":
                chunk = json.loads(line[5:])
                extra.update(chunk.get("oraculo") or {})
                if first is None and any(
                    (c.get("delta") or {}).get("content") for c in chunk.get("choices", [])
                ):
                    first = time.perf_counter() - start
    if first is None:
        raise RuntimeError(f"{url}: no text in the reply")
    return first * 1000


async def seed(user: User) -> None:
    """A note in the workspace (indexed) and a memory, so that retrieval has work to do."""
    base = f"/user/{user.name}/"
    note = "# Travel\n\nParis is the capital of France; the Louvre is on the right bank.\n"
    r = await user.api(
        "PUT",
        base + "api/contents/travel.md",
        json={"type": "file", "format": "text", "content": note},
    )
    assert r.status_code in (200, 201), r.text
    r = await user.api("POST", base + "api/v1/memory", json={"key": "tone", "value": "Be terse."})
    if r.status_code == 404:
        return  # no memory feature: retrieval is skipped anyway
    assert r.status_code in (200, 201), r.text
    await user.api("POST", base + "api/v1/memory/index")

    async def indexed() -> bool:
        r = await user.api("GET", base + "api/v1/memory/index", params={"q": "capital"})
        return r.status_code == 200 and bool(r.json()["passages"])

    await wait_for(indexed, 120, "the workspace index", 0.5)


async def run(args: argparse.Namespace) -> dict[str, Any]:
    models_port = free_port()
    with tempfile.TemporaryDirectory(prefix="oraculo-bench-chat-") as tmp:
        hub = HubProcess(Path(tmp), models=True, env={"ORACULO_MODELS_PORT": str(models_port)})
        await hub.start()
        try:
            await hub.models_loaded(300, 0.25)
            hub_client = HubClient(hub)
            user = await new_user(hub_client, "bench")
            await user.spawn()
            auth = f"token {user.token}"
            await seed(user)
            stack = f"{hub.url}/user/{user.name}/api/v1/chat"
            via_proxy = f"{hub.url}/services/models/v1/chat/completions"
            direct = f"http://127.0.0.1:{models_port}/services/models/v1/chat/completions"
            lookups: list[float] = []
            prompt: list[float] = []
            results: dict[str, list[float]] = {
                "stack": [],
                "stack, no retrieval": [],
                "direct (proxy)": [],
                "direct (port)": [],
            }
            async with httpx.AsyncClient(timeout=120) as client:
                for i in range(args.warmup + args.rounds):
                    # every request asks something no earlier one did: no cache (the model's
                    # prefix cache, the query embedding cache) answers it from a repeat
                    def bodies(q: str) -> dict[str, dict[str, Any]]:
                        common = {"max_tokens": args.max_tokens, "temperature": 0}
                        stack_body = {
                            "messages": [{"role": "user", "content": q}],
                            "store": not args.no_store,
                            **common,
                        }
                        return {
                            "stack": stack_body,
                            "stack, no retrieval": {**stack_body, "context": {"workspace": False}},
                            "model": {
                                "model": "smollm2-135m-instruct",
                                "messages": [
                                    {"role": "system", "content": DEFAULT_SYSTEM_PROMPT},
                                    {"role": "user", "content": q},
                                ],
                                **common,
                            },
                        }

                    base_q = QUESTIONS[i % len(QUESTIONS)]
                    order = [
                        ("stack", stack, "stack"),
                        ("stack, no retrieval", stack, "stack, no retrieval"),
                        ("direct (proxy)", via_proxy, "model"),
                        ("direct (port)", direct, "model"),
                    ]
                    order = order[i % 4 :] + order[: i % 4]  # rotate who goes first
                    requests = [
                        (name, url, bodies(f"{base_q} (request {i}.{k})")[kind])
                        for k, (name, url, kind) in enumerate(order)
                    ]
                    for name, url, body in requests:
                        extra: dict[str, Any] = {}
                        ms = await ttft(client, url, body, auth, extra)
                        if i >= args.warmup:
                            results[name].append(ms)
                            if name == "stack":
                                lookups.append(extra["context"]["lookup_ms"])
                                prompt.append(extra["prompt_tokens_estimate"])
            await user.client.aclose()
            await hub_client.aclose()
        finally:
            hub.stop()
    summary = {
        name: {
            "n": len(v),
            "p50_ms": round(statistics.median(v), 1),
            "p90_ms": round(pct(v, 0.9), 1),
            "mean_ms": round(statistics.fmean(v), 1),
        }
        for name, v in results.items()
    }
    paired = [s - d for s, d in zip(results["stack"], results["direct (proxy)"], strict=True)]
    paired_port = [s - d for s, d in zip(results["stack"], results["direct (port)"], strict=True)]
    paired_bare = [
        s - d
        for s, d in zip(results["stack, no retrieval"], results["direct (proxy)"], strict=True)
    ]
    return {
        "rounds": args.rounds,
        "max_tokens": args.max_tokens,
        "store": not args.no_store,
        "summary": summary,
        "added_vs_proxy_p50_ms": round(statistics.median(paired), 1),
        "added_vs_port_p50_ms": round(statistics.median(paired_port), 1),
        "stack_lookup_p50_ms": round(statistics.median(lookups), 1),
        "stack_prompt_tokens_estimate_p50": statistics.median(prompt),
        "added_no_retrieval_vs_proxy_p50_ms": round(statistics.median(paired_bare), 1),
        "raw_ms": {k: [round(x, 1) for x in v] for k, v in results.items()},
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rounds", type=int, default=30)
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--max-tokens", type=int, default=4)
    parser.add_argument("--no-store", action="store_true", help="send store=false (no sqlite)")
    args = parser.parse_args()
    result = asyncio.run(run(args))
    print(f"\nChat time to first token, {args.rounds} rounds (ms, at the client)\n")
    print("| path | p50 | p90 | mean |\n| --- | --- | --- | --- |")
    for name, s in result["summary"].items():
        print(f"| {name} | {s['p50_ms']} | {s['p90_ms']} | {s['mean_ms']} |")
    print(
        f"\nstack adds (paired median): {result['added_vs_proxy_p50_ms']} ms over the model "
        f"service through the proxy, {result['added_vs_port_p50_ms']} ms over its own port; "
        f"without retrieval, {result['added_no_retrieval_vs_proxy_p50_ms']} ms over the proxy\n"
        f"retrieval (memories + passages, in the server) p50 {result['stack_lookup_p50_ms']} ms; "
        f"the stack's prompt is ~{result['stack_prompt_tokens_estimate_p50']} estimated tokens"
    )
    out = REPO / "benchmarks" / "results" / f"chat-{int(time.time())}.json"
    out.parent.mkdir(exist_ok=True)
    out.write_text(json.dumps(result, indent=2))
    print(f"\nwrote {out.relative_to(REPO)}")


if __name__ == "__main__":
    main()
