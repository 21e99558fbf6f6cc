"""Metering: every request leaves a usage row; users see only their own, admins everyone's."""

from __future__ import annotations

import sqlite3
import time
from typing import Any

import httpx
import openai

from tests.harness import wait_for

from .conftest import ADMIN, ALICE, BOB, ModelServer, assert_envelope, bearer


async def usage(http: httpx.AsyncClient, key: str, **params: Any) -> dict[str, Any]:
    r = await http.get("/v1/usage", params=params, headers=bearer(key))
    assert r.status_code == 200, r.text
    return dict(r.json())


async def test_requests_are_metered(server: ModelServer, http: httpx.AsyncClient) -> None:
    since = time.time()
    async with openai.AsyncOpenAI(base_url=server.v1, api_key=BOB, max_retries=0) as bob:
        r = await bob.chat.completions.create(
            model="smollm2",
            messages=[{"role": "user", "content": "hi"}],
            max_tokens=5,
            temperature=0,
        )
        await bob.embeddings.create(model="minilm", input="metered")
    assert r.usage is not None
    bad = await http.post(
        "/v1/chat/completions", json={"model": "nope", "messages": []}, headers=bearer(BOB)
    )
    assert bad.status_code == 400

    async def rows() -> list[dict[str, Any]] | None:
        data = (await usage(http, BOB, since=since))["data"]
        return data if len(data) >= 3 else None

    data = await wait_for(rows, 10, "usage rows for bob")
    assert {d["user"] for d in data} == {"bob"}
    chat = next(d for d in data if d["endpoint"] == "chat.completions" and d["status"] == 200)
    assert chat["model"] == "smollm2-135m-instruct"
    assert chat["prompt_tokens"] == r.usage.prompt_tokens
    assert chat["completion_tokens"] == r.usage.completion_tokens
    assert chat["latency_ms"] > 0 and chat["ttft_ms"] is not None
    assert chat["ttft_ms"] <= chat["latency_ms"]
    emb = next(d for d in data if d["endpoint"] == "embeddings")
    assert emb["prompt_tokens"] > 0 and emb["status"] == 200
    failed = next(d for d in data if d["status"] == 400)
    assert failed["error_type"]

    # the rows are in the sqlite store itself, where the operator configured it
    db = server.workdir / "data" / "models" / "usage.sqlite"
    with sqlite3.connect(db) as conn:
        (n,) = conn.execute("select count(*) from usage_events where user = 'bob'").fetchone()
    assert n >= 3


async def test_users_see_only_their_own_usage(server: ModelServer, http: httpx.AsyncClient) -> None:
    async with openai.AsyncOpenAI(base_url=server.v1, api_key=ALICE, max_retries=0) as alice:
        await alice.embeddings.create(model="minilm", input="mine")

    async def alice_rows() -> bool:
        return bool((await usage(http, ALICE))["data"])

    await wait_for(alice_rows, 10, "alice's usage")
    mine = await usage(http, ALICE)
    assert mine["user"] == "alice"
    assert {d["user"] for d in mine["data"]} == {"alice"}
    assert {t["user"] for t in mine["totals"]} == {"alice"}
    r = await http.get("/v1/usage", params={"user": "bob"}, headers=bearer(ALICE))
    assert_envelope(r, 403)


async def test_admin_sees_everyone(http: httpx.AsyncClient) -> None:
    async def both() -> dict[str, Any] | None:
        everyone = await usage(http, ADMIN)
        users = {t["user"] for t in everyone["totals"]}
        return everyone if {"alice", "bob"} <= users else None

    everyone = await wait_for(both, 10, "usage of alice and bob")
    assert everyone["user"] is None
    only_bob = await usage(http, ADMIN, user="bob")
    assert {d["user"] for d in only_bob["data"]} == {"bob"}


async def test_metrics_are_for_operators(http: httpx.AsyncClient) -> None:
    r = await http.post(
        "/v1/embeddings", json={"model": "all-minilm-l6-v2", "input": "x"}, headers=bearer(ALICE)
    )
    assert r.status_code == 200, r.text
    assert_envelope(await http.get("/metrics"), 401)
    assert_envelope(await http.get("/metrics", headers=bearer(ALICE)), 403)
    r = await http.get("/metrics", headers=bearer(ADMIN))
    assert r.status_code == 200, r.text
    assert r.headers["Content-Type"].startswith("text/plain")
    assert 'oraculo_models_requests_total{endpoint="embeddings"' in r.text
    assert "alice" not in r.text  # no user names as labels
