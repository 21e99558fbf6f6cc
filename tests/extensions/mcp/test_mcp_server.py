"""The workspace's MCP server end to end: the official MCP client (streamable HTTP) through the
real hub proxy to alice's server, her hub token as the credential; her kernel, memories,
workspace index, files, notebooks and agents as tools; another user's token and no token refused.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import httpx
import httpx2
import pytest
from mcp import ClientSession
from mcp.client.streamable_http import streamable_http_client

from tests.harness import User, wait_for

TOOLS = {
    "run_code",
    "search_memories",
    "search_workspace",
    "list_files",
    "read_file",
    "write_file",
    "read_notebook",
    "write_notebook",
    "list_agents",
    "start_agent",
}


def mcp_url(user: User) -> str:
    return f"{user.server_url}oraculo/mcp"


@asynccontextmanager
async def connect(url: str, token: str | None) -> AsyncIterator[ClientSession]:
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    async with (
        httpx2.AsyncClient(headers=headers, timeout=httpx2.Timeout(60, read=120)) as http,
        streamable_http_client(url, http_client=http) as (read, write),
        ClientSession(read, write) as session,
    ):
        await session.initialize()
        yield session


async def call(session: ClientSession, tool: str, **args: Any) -> Any:
    """A tool's structured result (``result`` unwrapped for lists and strings)."""
    r = await session.call_tool(tool, args)
    assert not r.is_error, (tool, r.content)
    out = r.structured_content
    assert out is not None, (tool, r.content)
    return out.get("result", out) if set(out) == {"result"} else out


async def tool_error(session: ClientSession, tool: str, **args: Any) -> str:
    r = await session.call_tool(tool, args)
    assert r.is_error, (tool, r.structured_content)
    return " ".join(getattr(c, "text", "") for c in r.content)


async def test_the_official_client_lists_the_tools_and_runs_code_in_my_kernel(
    alice: User,
) -> None:
    async with connect(mcp_url(alice), alice.token) as session:
        tools = {t.name: t for t in (await session.list_tools()).tools}
        assert set(tools) == TOOLS
        assert tools["run_code"].input_schema["required"] == ["code"]

        out = await call(session, "run_code", code="mcp_x = 6 * 7\nprint('hello', mcp_x)")
        assert out["status"] == "ok" and out["stdout"] == "hello 42\n", out
        again = await call(session, "run_code", code="mcp_x + 1")
        assert again["results"] == ["43"] and again["kernel"] == out["kernel"]  # state kept
        bad = await call(session, "run_code", code="1 / 0")
        assert bad["status"] == "error" and bad["error"].startswith("ZeroDivisionError")
        bash = await call(session, "run_code", code="echo $((40 + 2))", language="bash")
        assert bash["stdout"] == "42\n"

        assert "ruby" in await tool_error(session, "run_code", code="1", language="ruby")
        assert "limit" in await tool_error(session, "run_code", code="1", timeout=100_000)
        assert "no-such.ipynb" in await tool_error(
            session, "run_code", code="1", notebook="no-such.ipynb"
        )

    # the audit names the MCP call and who made it
    r = await alice.api("GET", f"/user/{alice.name}/api/v1/execute/audit")
    started = [
        rec for rec in r.json()["records"]
        if rec["event"] == "started" and rec["execution_id"] == out["execution_id"]
    ]  # fmt: skip
    assert started and started[0]["origin"] == "mcp" and started[0]["actor"] == alice.name


async def test_files_and_notebooks_round_trip(alice: User) -> None:
    async with connect(mcp_url(alice), alice.token) as session:
        written = await call(session, "write_file", path="mcp-notes/todo.txt", content="buy salt\n")
        assert written["path"] == "mcp-notes/todo.txt" and written["type"] == "file"
        assert await call(session, "read_file", path="mcp-notes/todo.txt") == "buy salt\n"

        cells = [
            {"cell_type": "markdown", "source": "# From MCP"},
            {"cell_type": "code", "source": "print('made over MCP')"},
        ]
        nb = await call(session, "write_notebook", path="mcp-notes/made.ipynb", cells=cells)
        assert nb["type"] == "notebook"
        listed = await call(session, "list_files", path="mcp-notes")
        assert [(e["name"], e["type"]) for e in listed] == [
            ("made.ipynb", "notebook"),
            ("todo.txt", "file"),
        ]
        back = await call(session, "read_notebook", path="mcp-notes/made.ipynb")
        assert [(c["cell_type"], c["source"]) for c in back] == [
            (c["cell_type"], c["source"]) for c in cells
        ]

        # the notebook is a real one: JupyterLab's contents API reads it, on the oraculo kernel
        r = await alice.api("GET", f"/user/{alice.name}/api/contents/mcp-notes/made.ipynb")
        assert r.status_code == 200
        assert r.json()["content"]["metadata"]["kernelspec"]["name"] == "oraculo"

        # run code in that notebook's kernel, then read the notebook as its JSON text
        r = await alice.api(
            "POST",
            f"/user/{alice.name}/api/sessions",
            json={
                "path": "mcp-notes/made.ipynb",
                "type": "notebook",
                "kernel": {"name": "oraculo"},
            },
        )
        assert r.status_code == 201, r.text
        out = await call(
            session, "run_code", code="import os; os.getcwd()", notebook="mcp-notes/made.ipynb"
        )
        assert out["status"] == "ok" and out["results"][0].endswith("mcp-notes'"), out
        assert json.loads(await call(session, "read_file", path="mcp-notes/made.ipynb"))["cells"]

        # bad paths are tool errors that say what, and nothing outside the home is reached
        assert "No such file" in await tool_error(session, "read_file", path="nope.txt")
        assert await tool_error(session, "read_file", path="../../../../etc/passwd")
        assert await tool_error(session, "list_files", path="mcp-notes/todo.txt")
        assert ".ipynb" in await tool_error(session, "write_notebook", path="x.txt", cells=[])
        # an invalid argument is refused by the tool's schema, and nothing is written
        assert await tool_error(session, "write_notebook", path="y.ipynb", cells=[{"src": 1}])
        r = await alice.api("GET", f"/user/{alice.name}/api/contents/y.ipynb")
        assert r.status_code == 404


async def test_search_my_memories_and_workspace(alice: User) -> None:
    base = f"/user/{alice.name}/api/v1"
    r = await alice.api(
        "POST",
        f"{base}/memory",
        json={"key": "mcp_units", "value": "Alice reports river flow in cubic metres per second."},
    )
    assert r.status_code in (200, 201), r.text
    async with connect(mcp_url(alice), alice.token) as session:
        await call(
            session,
            "write_file",
            path="mcp-notes/rivers.md",
            content="# Rivers\n\nThe Napo river joins the Amazon near Iquitos in Peru.\n",
        )
        hits = await call(session, "search_memories", query="how should river flow be reported")
        assert hits and hits[0]["key"] == "mcp_units", hits

        r = await alice.api("POST", f"{base}/memory/index")
        assert r.status_code == 202

        async def found() -> list[dict[str, Any]] | None:
            passages = await call(session, "search_workspace", query="Napo river Amazon", k=5)
            hit = [p for p in passages if p["path"] == "mcp-notes/rivers.md"]
            return hit or None

        passages = await wait_for(found, 90, "the index to have the note", 0.5)
        assert "Iquitos" in passages[0]["text"]
        assert await tool_error(session, "search_memories", query="")


async def test_list_and_start_agents(alice: User) -> None:
    async with connect(mcp_url(alice), alice.token) as session:
        agents = await call(session, "list_agents")
        names = {a["name"] for a in agents}
        assert names, agents
        own = next(a for a in agents if not a.get("needs_approval"))
        run = await call(
            session,
            "start_agent",
            goal="Say hello in three words.",
            agents=[own["name"]],
            max_steps=1,
        )
        assert len(run["id"]) == 32
        assert "no-such-agent" in await tool_error(
            session, "start_agent", goal="x", agents=["no-such-agent"]
        )
    base = f"/user/{alice.name}/api/v1/agents/runs"
    r = await alice.api("GET", f"{base}/{run['id']}")
    assert r.status_code == 200 and r.json()["owner"] == alice.name, r.text
    r = await alice.api("POST", f"{base}/{run['id']}/cancel")
    assert r.status_code in (200, 409), r.text


async def test_another_users_token_and_no_token_are_refused(alice: User, mallory: User) -> None:
    url = mcp_url(alice)
    for token in (mallory.token, None, "not-a-token"):
        with pytest.raises(BaseException):  # noqa: B017 -- the client fails in its task group
            async with connect(url, token):
                pass
    init = {
        "jsonrpc": "2.0",
        "id": 1,
        "method": "tools/call",
        "params": {"name": "run_code", "arguments": {"code": "open('/tmp/pwned', 'w')"}},
    }
    accept = {"Accept": "application/json, text/event-stream"}
    async with httpx.AsyncClient() as bare:
        for method in ("POST", "GET", "DELETE"):
            r = await bare.request(
                method,
                url,
                json=init,
                headers={**accept, "Authorization": f"Bearer {mallory.token}"},
            )
            assert r.status_code == 403, (method, r.status_code, r.text)
            assert set(r.json()) == {"message", "reason", "type"}
            r = await bare.request(method, url, json=init, headers=accept)
            assert r.status_code == 403, (method, r.status_code)
    # mallory's own MCP server is hers: the same client works with her token on her URL
    async with connect(mcp_url(mallory), mallory.token) as session:
        out = await call(session, "run_code", code="import getpass; 'ok'")
        assert out["results"] == ["'ok'"]
    r = await alice.api("GET", f"/user/{alice.name}/api/v1/execute/audit")
    assert not any(rec.get("actor") == mallory.name for rec in r.json()["records"])
