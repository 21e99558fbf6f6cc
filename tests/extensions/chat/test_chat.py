"""The chat API, the Chat panel and ``%%chat``, through a real hub with the real model service.

Everything goes through the hub's proxy: ``/user/<name>/api/v1/chat`` on the user's server, which
calls the model service (SmolLM2-135M) at ``/services/models/`` with the server's own token.
Replies are short (``max_tokens``) so that the module stays quick on two cores.
"""

from __future__ import annotations

import json
import os
import sqlite3
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import nbformat
import openai
import pytest
from nbclient import NotebookClient

from tests.harness import HubClient, HubProcess, User, new_user, signed_in_panel, wait_for

CHAT = "api/v1/chat"


@pytest.fixture(scope="module")
async def ana(models_hub: HubProcess) -> AsyncIterator[User]:
    """A user of the session hub (which runs the model service) with a server of her own."""
    client = HubClient(models_hub)
    user = await new_user(client, "ana")
    await user.spawn()
    yield user
    await user.client.aclose()
    await client.aclose()


@pytest.fixture(scope="module")
async def eve(models_hub: HubProcess) -> AsyncIterator[User]:
    """Another user of the same hub (no server needed: her token must not open ana's)."""
    client = HubClient(models_hub)
    user = await new_user(client, "eve")
    yield user
    await user.client.aclose()
    await client.aclose()


def url(user: User, path: str) -> str:
    return f"/user/{user.name}/{path}"


def assert_envelope(r: httpx.Response, status: int, type_: str | None = None) -> dict[str, Any]:
    assert r.status_code == status, (r.status_code, r.text[:500])
    assert r.headers["content-type"].startswith("application/json")
    body = r.json()
    assert set(body) == {"message", "reason", "type"}, body
    assert body["message"] and "Traceback" not in body["message"]
    if type_:
        assert body["type"] == type_, body
    return dict(body)


def ask(text: str, **kw: Any) -> dict[str, Any]:
    return {
        "messages": [{"role": "user", "content": text}],
        "max_tokens": 8,
        "temperature": 0,
        **kw,
    }


async def sse(user: User, body: dict[str, Any]) -> list[tuple[str, Any]]:
    """POST a streamed chat; the (event, data) pairs in order."""
    events: list[tuple[str, Any]] = []
    async with user.client.http.stream(
        "POST", url(user, CHAT), json={**body, "stream": True}, headers=user.auth
    ) as r:
        assert r.status_code == 200, (await r.aread())[:500]
        assert r.headers["content-type"].startswith("text/event-stream")
        event = ""
        async for line in r.aiter_lines():
            if line.startswith("event:"):
                event = line[6:].strip()
            elif line.startswith("data:"):
                data = line[5:].strip()
                events.append((event or "message", data if data == "[DONE]" else json.loads(data)))
                event = ""
    return events


# --- API --------------------------------------------------------------------------------------


async def test_bad_input_is_400_in_the_error_shape(ana: User) -> None:
    cases: list[dict[str, Any]] = [
        {"content": b"{not json"},
        {"content": b"[1, 2]"},
        {"json": {}},
        {"json": {"messages": []}},
        {"json": {"messages": [{"role": "wizard", "content": "hi"}]}},
        {"json": ask("hi", temperature="0.5")},
        {"json": ask("hi", max_tokens=0)},
        {"json": ask("hi", conversation_id="../../etc/passwd")},
        {"json": ask("hi", context={"notebook": ""})},
        {"json": ask("hi", n=3)},
    ]
    for kw in cases:
        r = await ana.api("POST", url(ana, CHAT), **kw)
        body = assert_envelope(r, 400, "invalid_request")
        assert body["message"].startswith(("Invalid request", "Request body")), body
    r = await ana.api("GET", url(ana, "api/v1/chat/conversations/" + "0" * 32))
    assert_envelope(r, 404, "not_found")
    r = await ana.api("POST", url(ana, CHAT), json=ask("hi", conversation_id="f" * 32))
    assert_envelope(r, 404, "not_found")
    r = await ana.api("PATCH", url(ana, "api/v1/chat/conversations/" + "0" * 32), json={})
    assert_envelope(r, 400, "invalid_request")
    r = await ana.api("POST", url(ana, CHAT), json=ask("hi", context={"notebook": "nope.ipynb"}))
    assert_envelope(r, 404, "not_found")


async def test_another_users_token_is_refused_everywhere(ana: User, eve: User) -> None:
    cid = "0" * 32
    calls = [
        ("POST", CHAT, ask("hi")),
        ("POST", "api/v1/chat/completions", ask("hi")),
        ("GET", "api/v1/chat/models", None),
        ("GET", "api/v1/chat/conversations", None),
        ("POST", "api/v1/chat/conversations", {"title": "x"}),
        ("GET", f"api/v1/chat/conversations/{cid}", None),
        ("PATCH", f"api/v1/chat/conversations/{cid}", {"title": "x"}),
        ("DELETE", f"api/v1/chat/conversations/{cid}", None),
    ]
    for method, path, body in calls:
        kw: dict[str, Any] = {"json": body} if body is not None else {}
        r = await eve.client.http.request(method, url(ana, path), headers=eve.auth, **kw)
        assert r.status_code == 403, (method, path, r.status_code)
        async with httpx.AsyncClient(base_url=ana.client.hub.url) as anon:
            r = await anon.request(method, url(ana, path), **kw)
        assert r.status_code in (302, 401, 403), (method, path, r.status_code)


async def test_unknown_model_is_404(ana: User) -> None:
    r = await ana.api("POST", url(ana, CHAT), json=ask("hi", model="gpt-17"))
    body = assert_envelope(r, 404, "not_found")
    assert "gpt-17" in body["message"]
    r = await ana.api("GET", url(ana, "api/v1/chat/models"))
    assert r.status_code == 200, r.text
    models = r.json()
    assert models["default"] == "smollm2-135m-instruct"
    assert [m["id"] for m in models["models"]] == ["smollm2-135m-instruct"]  # chat models only
    r = await ana.api("POST", url(ana, CHAT), json=ask("hi", model="smollm2"))  # an alias
    assert r.status_code == 200, r.text
    assert r.json()["model"] == "smollm2-135m-instruct"


async def test_json_reply_with_extra_fields(ana: User) -> None:
    r = await ana.api("POST", url(ana, CHAT), json=ask("What is the capital of France?"))
    assert r.status_code == 200, r.text
    assert r.json()["oraculo"]["conversation_id"] is None  # API clients: not stored by default
    r = await ana.api(
        "POST", url(ana, CHAT), json=ask("What is the capital of France?", store=True)
    )
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["object"] == "chat.completion"
    assert body["choices"][0]["message"]["role"] == "assistant"
    assert body["choices"][0]["message"]["content"]
    assert body["usage"]["completion_tokens"] <= 8
    extra = body["oraculo"]
    assert len(extra["conversation_id"]) == 32
    assert isinstance(extra["citations"], list) and isinstance(extra["memories"], list)
    assert extra["prompt_tokens_estimate"] >= body["usage"]["prompt_tokens"]  # conservative


async def test_stream_format(ana: User) -> None:
    events = await sse(ana, ask("Say hello.", stream_options={"include_usage": True}, store=True))
    assert events[-1] == ("message", "[DONE]")
    chunks = [data for _, data in events[:-1]]
    assert all(e == "message" for e, _ in events)
    assert all(c["object"] == "chat.completion.chunk" for c in chunks)
    assert chunks[0]["choices"][0]["delta"]["role"] == "assistant"
    assert len(chunks[0]["oraculo"]["conversation_id"]) == 32
    finals = [c for c in chunks if c["choices"] and c["choices"][0]["finish_reason"]]
    assert len(finals) == 1 and finals[0]["choices"][0]["finish_reason"] == "length"
    assert finals[0]["oraculo"]["conversation_id"] == chunks[0]["oraculo"]["conversation_id"]
    assert chunks[-1]["usage"]["completion_tokens"] == 8
    text = "".join(c["choices"][0]["delta"].get("content") or "" for c in chunks if c["choices"])
    assert text.strip()


async def test_openai_client_through_the_hub(ana: User) -> None:
    base_url = f"{ana.client.hub.url}/user/{ana.name}/api/v1"
    async with openai.AsyncOpenAI(base_url=base_url, api_key=ana.token, max_retries=0) as client:
        r = await client.chat.completions.create(
            model="smollm2",
            messages=[{"role": "user", "content": "What is the capital of France?"}],
            temperature=0,
            max_tokens=12,
        )
        assert "Paris" in (r.choices[0].message.content or "")
        assert r.model_extra and r.model_extra["oraculo"]["conversation_id"] is None
        stream = await client.chat.completions.create(
            model="smollm2-135m-instruct",
            messages=[{"role": "user", "content": "hi"}],
            max_tokens=4,
            stream=True,
        )
        chunks = [c async for c in stream]
        assert chunks[-1].choices[0].finish_reason in ("stop", "length")
        assert chunks[-1].model_extra and "oraculo" in chunks[-1].model_extra
        with pytest.raises(openai.NotFoundError):
            await client.chat.completions.create(
                model="nope", messages=[{"role": "user", "content": "hi"}]
            )
        with pytest.raises(openai.BadRequestError):
            await client.chat.completions.create(model="smollm2", messages=[])


async def test_conversations_persist_across_a_restart(ana: User, models_hub: HubProcess) -> None:
    r = await ana.api("POST", url(ana, CHAT), json=ask("My name is Ana. Remember it.", store=True))
    assert r.status_code == 200, r.text
    cid = r.json()["oraculo"]["conversation_id"]
    first = r.json()["choices"][0]["message"]["content"]

    # Resume: the stored turns go to the model before the new one.
    r = await ana.api("POST", url(ana, CHAT), json=ask("What is my name?", conversation_id=cid))
    assert r.status_code == 200, r.text
    assert r.json()["oraculo"]["conversation_id"] == cid
    assert r.json()["oraculo"]["history_dropped"] == 0

    r = await ana.api("PATCH", url(ana, f"api/v1/chat/conversations/{cid}"), json={"title": "Ana"})
    assert r.status_code == 200 and r.json()["title"] == "Ana"

    # Not stored when asked not to.
    r = await ana.api("POST", url(ana, CHAT), json=ask("ephemeral", store=False))
    assert r.status_code == 200 and r.json()["oraculo"]["conversation_id"] is None

    await ana.stop_server()
    db = models_hub.data_dir / "users" / ana.name / ".oraculo" / "conversations.sqlite"
    with sqlite3.connect(db) as conn:
        assert conn.execute("PRAGMA integrity_check").fetchone() == ("ok",)
    await ana.spawn()

    r = await ana.api("GET", url(ana, "api/v1/chat/conversations"))
    assert r.status_code == 200, r.text
    listed = {c["id"]: c for c in r.json()["conversations"]}
    assert listed[cid]["title"] == "Ana" and listed[cid]["message_count"] == 4
    r = await ana.api("GET", url(ana, f"api/v1/chat/conversations/{cid}"))
    messages = r.json()["messages"]
    assert [m["role"] for m in messages] == ["user", "assistant", "user", "assistant"]
    assert messages[0]["content"] == "My name is Ana. Remember it."
    assert messages[1]["content"] == first
    assert messages[1]["oraculo"]["model"] == "smollm2-135m-instruct"

    r = await ana.api("POST", url(ana, "api/v1/chat/conversations"), json={"title": "Empty"})
    assert r.status_code == 201 and r.headers["Location"].endswith(r.json()["id"])
    r = await ana.api("DELETE", url(ana, f"api/v1/chat/conversations/{cid}"))
    assert r.status_code == 204
    r = await ana.api("GET", url(ana, f"api/v1/chat/conversations/{cid}"))
    assert_envelope(r, 404, "not_found")


async def test_notebook_and_kernel_context(ana: User) -> None:
    nb = nbformat.v4.new_notebook()
    nb.cells = [
        nbformat.v4.new_markdown_cell("# Quarterly sales"),
        nbformat.v4.new_code_cell("sales = load('q3.csv')  # the Q3 sales table"),
    ]
    r = await ana.api(
        "PUT",
        url(ana, "api/contents/ctx.ipynb"),
        json={"type": "notebook", "format": "json", "content": nb},
    )
    assert r.status_code in (200, 201), r.text
    kernel = await ana.start_kernel()
    out = await ana.execute(
        kernel,
        "import pandas as pd, numpy as np\n"
        "sales = pd.DataFrame({'region': ['n', 's'], 'revenue': [1.5, 2.5]})\n"
        "weights = np.zeros((3, 4), dtype='float32')\nthreshold = 0.75",
    )
    assert out["error"] is None, out
    body = ask(
        "Which columns does the sales dataframe have?",
        context={"notebook": "ctx.ipynb", "kernel": kernel},
    )
    r = await ana.api("POST", url(ana, CHAT), json=body)
    assert r.status_code == 200, r.text
    context = r.json()["oraculo"]["context"]
    assert context["notebook"] == {"path": "ctx.ipynb", "cells": 2}
    assert context["variables"] == 3  # sales, weights, threshold; pd and np are modules
    # The introspection left no trace in the kernel's history or namespace.
    out = await ana.execute(kernel, "print(sorted(k for k in globals() if not k.startswith('_')))")
    assert "summarize_namespace" not in out["stdout"]
    r = await ana.api("POST", url(ana, CHAT), json=ask("hi", context={"kernel": "0" * 12}))
    assert_envelope(r, 404, "not_found")


async def test_chat_magic_in_a_notebook(ana: User, tmp_path: Path) -> None:
    """``%%chat`` streams a reply into the cell's output, with the notebook's variables."""
    token = await ana.client.token(ana.name, scopes=[f"access:servers!server={ana.name}/"])
    nb = nbformat.v4.new_notebook()
    nb.cells = [
        nbformat.v4.new_code_cell(
            "import pandas as pd\ntrips = pd.DataFrame({'city': ['Lima'], 'km': [12.5]})"
        ),
        nbformat.v4.new_code_cell("%%chat --max-tokens 8\nWhat is in the trips dataframe?"),
        nbformat.v4.new_code_cell("%%chat --max-tokens 4 --temperature 0\nAnd its shape?"),
        nbformat.v4.new_code_cell("%%chat --model gpt-17\nhi"),
        nbformat.v4.new_code_cell("%memory add favourite_colour teal, like the lake"),
        nbformat.v4.new_code_cell("%memory search favourite colour"),
        nbformat.v4.new_code_cell("%memory"),
    ]
    env = {
        "ORACULO_SERVER_URL": f"{ana.client.hub.url}/user/{ana.name}/",
        "ORACULO_KERNEL_TOKEN": token,
    }
    saved = {k: os.environ.get(k) for k in env}
    os.environ.update(env)  # what the kernel provisioner gives every oraculo kernel
    try:
        # A local kernel loading the oraculo kernel's IPython extension, as kernel.json does
        # (its provisioner only gives the env vars inside a hub-spawned server).
        client = NotebookClient(
            nb,
            kernel_name="python3",
            extra_arguments=["--IPKernelApp.extensions=oraculo.kernels.ipython"],
            timeout=120,
            allow_errors=False,
        )
        await client.async_execute()
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
    out = "".join(o.get("text", "") for o in nb.cells[1].outputs if o.output_type == "stream")
    reply, _, footer = out.rpartition("\n\n— ")
    assert reply.strip(), out
    assert "smollm2-135m-instruct" in footer and "variables: trips" in footer
    assert len([o for o in nb.cells[1].outputs if o.output_type == "stream"]) >= 1
    # The second cell continues the same conversation.
    r = await ana.api("GET", url(ana, "api/v1/chat/conversations"))
    convs = [c for c in r.json()["conversations"] if c["title"].startswith("What is in the trips")]
    assert len(convs) == 1 and convs[0]["message_count"] == 4
    err = "".join(o.get("text", "") for o in nb.cells[3].outputs if o.output_type == "stream")
    assert "HTTP 404" in err and "gpt-17" in err

    def text(i: int) -> str:
        return "".join(o.get("text", "") for o in nb.cells[i].outputs if o.output_type == "stream")

    r = await ana.api("GET", url(ana, "api/v1/chat/models"))
    if r.json()["features"]["memory"]:
        assert text(4) == "Remembered favourite_colour.\n"
        assert "favourite_colour: teal, like the lake" in text(5)
        assert "favourite_colour: teal, like the lake" in text(6)
    else:
        assert "HTTP 404" in text(4)


# --- memory and workspace passages (the memory feature) ---------------------------------------

VOLCANO = (
    "# Field notes\n\nThe Quilotoa expedition measured the crater lake at 3,914 metres.\n"
    "The lake is green because of dissolved minerals.\n"
)


async def indexed(user: User) -> None:
    """Put a note in the user's workspace and wait until the RAG index finds it."""
    r = await user.api("GET", url(user, "api/v1/chat/models"))
    assert r.json()["features"]["memory"], "the memory feature did not load"
    r = await user.api(
        "PUT",
        url(user, "api/contents/notes"),
        json={"type": "directory"},
    )
    r = await user.api(
        "PUT",
        url(user, "api/contents/notes/quilotoa.md"),
        json={"type": "file", "format": "text", "content": VOLCANO},
    )
    assert r.status_code in (200, 201), r.text

    r = await user.api("POST", url(user, "api/v1/memory/index"))
    assert r.status_code == 202, r.text

    async def found() -> bool:
        r = await user.api("GET", url(user, "api/v1/memory/index"), params={"q": "Quilotoa lake"})
        return r.status_code == 200 and any(
            p["path"] == "notes/quilotoa.md" for p in r.json()["passages"]
        )

    await wait_for(found, 90, "the workspace index to find the note", 0.5)


async def test_reply_cites_workspace_passages_and_memories(ana: User) -> None:
    await indexed(ana)
    memory = {"key": "lake_depths", "value": "Give lake depths in metres, never feet."}
    r = await ana.api("POST", url(ana, "api/v1/memory"), json=memory)
    assert r.status_code in (200, 201), r.text
    events = await sse(ana, ask("How deep is the Quilotoa crater lake?", store=True))
    final = next(d for _, d in events if d != "[DONE]" and d["choices"][0]["finish_reason"])
    extra = final["oraculo"]
    cited = [c for c in extra["citations"] if c["path"] == "notes/quilotoa.md"]
    assert cited and cited[0]["index"] >= 1 and cited[0]["start_line"] >= 1
    assert {"path", "cell", "start_line", "end_line", "score"} <= set(cited[0])
    assert "lake_depths" in [m["key"] for m in extra["memories"]], extra
    # The stored reply keeps its citations.
    r = await ana.api("GET", url(ana, f"api/v1/chat/conversations/{extra['conversation_id']}"))
    assert r.json()["messages"][-1]["oraculo"]["citations"] == extra["citations"]
    # Opting out of the workspace: nothing retrieved, nothing cited.
    body = ask("How deep is the Quilotoa crater lake?", context={"workspace": False})
    r = await ana.api("POST", url(ana, CHAT), json=body)
    assert r.status_code == 200, r.text
    assert r.json()["oraculo"]["citations"] == [] and r.json()["oraculo"]["memories"] == []


# --- the Chat panel in a browser --------------------------------------------------------------


@pytest.mark.browser
async def test_chat_panel_streams_a_reply_with_citations(ana: User, artifacts: Path) -> None:
    from playwright.async_api import expect

    await indexed(ana)
    r = await ana.api(
        "POST",
        url(ana, "api/v1/memory"),
        json={"key": "expedition", "value": "The user leads the Quilotoa expedition."},
    )
    assert r.status_code in (200, 201), r.text
    async with signed_in_panel(ana, "chat", {"width": 1300, "height": 850}) as panel:
        page = panel.page
        status = page.locator("[data-testid=oraculo-chat]")
        await expect(status).to_have_attribute("data-state", "idle", timeout=90_000)

        states: list[str | None] = []

        async def settled() -> bool:
            # Every state the page shows, in order, until the reply is done.
            state = await status.get_attribute("data-state")
            if not states or states[-1] != state:
                states.append(state)
            return state in ("done", "error")

        box = page.locator("textarea").first
        await box.fill("Describe the Quilotoa crater lake in three sentences.")
        await box.press("Enter")
        await wait_for(settled, 120, "the reply", 0.02)
        assert states[-2:] == ["streaming", "done"], (states, await status.inner_text())
        cites = page.get_by_test_id("chat-citations")
        await expect(cites).to_contain_text("notes/quilotoa.md")
        state = await status.inner_text()
        assert "memory expedition" in await cites.inner_text(), state
        select = page.locator(".chat-conversations select")
        await expect(select).to_contain_text("Describe the Quilotoa crater lake")
        await page.screenshot(path=str(artifacts / "chat-panel.png"), full_page=True)

        # Stop: the reply stops streaming and the panel says so.
        await box.fill("Write a very long story about a robot who learns to paint.")
        await box.press("Enter")
        await expect(status).to_have_attribute("data-state", "streaming", timeout=30_000)
        await page.get_by_role("button", name="Stop").click()
        await expect(status).to_have_attribute("data-state", "stopped", timeout=10_000)
    assert not panel.offsite(), panel.offsite()
    assert not panel.bad, panel.bad


async def test_chat_magic_in_the_users_own_kernel(ana: User) -> None:
    """In a kernel of ana's server the provisioner's env vars are enough: no setup at all."""
    kernel = await ana.start_kernel()  # the default: the oraculo kernelspec
    out = await ana.execute(
        kernel,
        "import numpy as np\nmatrix = np.eye(3)\n",
    )
    assert out["error"] is None, out
    out = await ana.execute(kernel, "%%chat --max-tokens 4 --new\nWhat is matrix?", timeout=120)
    assert out["error"] is None and out["stderr"] == "", out
    reply, _, footer = out["stdout"].rpartition("\n\n— ")
    assert reply.strip() and "smollm2-135m-instruct" in footer and "variables: matrix" in footer
