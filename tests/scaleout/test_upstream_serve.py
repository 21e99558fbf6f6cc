"""An OpenAI-compatible server we did not write, as the upstream of a model entry.

``transformers serve`` (the ``serving`` extra) serves the bundled SmolLM2 saved as a normal
checkpoint; our model service stands in front as the router: the client talks to ours with our
keys, ours forwards to ``transformers serve``, meters the tokens it reports, and applies our limits
before anything reaches it. Replies are kept to a few tokens: on a busy 2-core machine each one
costs a second or more.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest

from tests.harness import free_port, wait_for
from tests.models.conftest import ALICE, BOB, KEYS, LIMITED, ModelServer, assert_envelope, bearer

from .checkpoint import save_smollm2

# Setting up saves a checkpoint and loads it in transformers serve: 2-3 minutes on a busy machine.
pytestmark = pytest.mark.timeout(600)

WEATHER_TOOL = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "The weather in a city.",
        "parameters": {
            "type": "object",
            "properties": {"city": {"type": "string"}},
            "required": ["city"],
        },
    },
}


@pytest.fixture(scope="module")
async def served(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[tuple[str, str]]:
    """``transformers serve`` pinned to the checkpoint: (its /v1 URL, the model id it serves)."""
    folder = tmp_path_factory.mktemp("serve")
    checkpoint = save_smollm2(folder / "smollm2-135m-instruct")
    port = free_port()
    log = open(folder / "serve.log", "wb")
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
    command = [str(Path(sys.executable).parent / "transformers"), "serve", str(checkpoint)]
    command += ["--host", "127.0.0.1", "--port", str(port), "--dtype", "float32"]
    proc = subprocess.Popen(
        [*command, "--log-level", "info"],
        env=env,
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    log.close()
    base = f"http://127.0.0.1:{port}"

    async def loaded() -> bool:
        if proc.poll() is not None:
            raise RuntimeError((folder / "serve.log").read_text()[-3000:])
        async with httpx.AsyncClient(timeout=5) as c:
            r = await c.get(f"{base}/v1/models")
            return r.status_code == 200 and bool(r.json()["data"])

    try:
        await wait_for(loaded, 240, "transformers serve to load the checkpoint", 0.5)
        yield f"{base}/v1", str(checkpoint)
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()


@pytest.fixture(scope="module")
async def router(
    served: tuple[str, str], tmp_path_factory: pytest.TempPathFactory
) -> AsyncIterator[ModelServer]:
    url, model_id = served
    config: dict[str, Any] = {
        "ModelServiceApp": {
            "models": [
                {
                    "name": "smollm2-served",
                    "kind": "chat",
                    "source": url,
                    "upstream_model": model_id,
                    "context_length": 2048,
                    "default_max_tokens": 8,
                    "timeout": 240,
                },
                # the same server, asked for a model it does not serve
                {"name": "not-served", "kind": "chat", "source": url, "upstream_model": "nope"},
                # a server that is not there
                {"name": "gone", "kind": "chat", "source": f"http://127.0.0.1:{free_port()}/v1"},
            ],
            "user_limits": {"limited": {"requests_per_minute": 1}},
        }
    }
    server = await ModelServer(tmp_path_factory.mktemp("router"), config, KEYS).start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
async def alice(router: ModelServer) -> AsyncIterator[openai.AsyncOpenAI]:
    async with openai.AsyncOpenAI(
        base_url=router.v1, api_key=ALICE, max_retries=0, timeout=240
    ) as client:
        yield client


async def test_chat_and_streaming_through_our_service(
    router: ModelServer, alice: openai.AsyncOpenAI
) -> None:
    since = time.time()
    reply = await alice.chat.completions.create(
        model="smollm2-served",
        messages=[{"role": "user", "content": "What is the capital of France?"}],
        max_tokens=8,
        temperature=0,
    )
    assert reply.model == "smollm2-served"
    assert "Paris" in (reply.choices[0].message.content or "")
    assert reply.usage is not None and reply.usage.prompt_tokens > 0

    stream = await alice.chat.completions.create(
        model="smollm2-served",
        messages=[{"role": "user", "content": "Say hello."}],
        max_tokens=4,
        stream=True,
        stream_options={"include_usage": True},
    )
    chunks = [c async for c in stream]
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text.strip()
    last = chunks[-1]
    assert last.usage is not None and last.usage.completion_tokens == 4

    # metered by us, with the tokens the upstream counted
    async with httpx.AsyncClient(base_url=router.url, timeout=30) as http:

        async def rows() -> list[dict[str, Any]] | None:
            r = await http.get("/v1/usage", params={"since": since}, headers=bearer(ALICE))
            data = [d for d in r.json()["data"] if d["model"] == "smollm2-served"]
            return data if len(data) >= 2 else None

        data = await wait_for(rows, 10, "alice's usage rows for the served model")
        assert {d["prompt_tokens"] for d in data} >= {reply.usage.prompt_tokens}
        assert all(d["status"] == 200 and d["user"] == "alice" for d in data)
        r = await http.get("/v1/usage", params={"user": "alice"}, headers=bearer(BOB))
        assert_envelope(r, 403)


async def test_tools_are_relayed(alice: openai.AsyncOpenAI) -> None:
    # SmolLM2's chat template has no tool format, so transformers serve answers in text; the
    # request with tools goes through and comes back well formed (tool-call relaying itself is
    # tested in tests/models/test_upstream.py against an upstream that makes calls).
    reply = await alice.chat.completions.create(
        model="smollm2-served",
        messages=[{"role": "user", "content": "What is the weather in Paris?"}],
        tools=[WEATHER_TOOL],  # type: ignore[list-item]
        max_tokens=6,
        temperature=0,
    )
    choice = reply.choices[0]
    assert choice.finish_reason in ("stop", "length", "tool_calls")
    assert choice.message.content or choice.message.tool_calls


async def test_errors_come_back_in_our_envelope(router: ModelServer) -> None:
    async with httpx.AsyncClient(base_url=router.url, timeout=60) as http:
        ask = {"messages": [{"role": "user", "content": "hi"}], "max_tokens": 2}
        # refused by the upstream: a model it does not serve
        r = await http.post(
            "/v1/chat/completions", json={**ask, "model": "not-served"}, headers=bearer(ALICE)
        )
        assert_envelope(r, 400)
        # no upstream there at all
        r = await http.post(
            "/v1/chat/completions", json={**ask, "model": "gone"}, headers=bearer(ALICE)
        )
        err = assert_envelope(r, 502)
        assert "127.0.0.1" not in err["message"]
        # invalid before it is sent anywhere
        r = await http.post(
            "/v1/chat/completions",
            json={"model": "smollm2-served", "messages": "hi"},
            headers=bearer(ALICE),
        )
        assert_envelope(r, 400)
        r = await http.post("/v1/chat/completions", json={**ask, "model": "smollm2-served"})
        assert_envelope(r, 401)


async def test_our_limits_apply_before_the_upstream(router: ModelServer) -> None:
    async with httpx.AsyncClient(base_url=router.url, timeout=240) as http:
        ask = {
            "model": "smollm2-served",
            "messages": [{"role": "user", "content": "hi"}],
            "max_tokens": 1,
        }
        first = await http.post("/v1/chat/completions", json=ask, headers=bearer(LIMITED))
        assert first.status_code == 200, first.text
        second = await http.post("/v1/chat/completions", json=ask, headers=bearer(LIMITED))
        err = assert_envelope(second, 429)
        assert err["code"] == "rate_limit_exceeded", err
        assert int(second.headers["Retry-After"]) >= 1
