"""MCP servers a user configures, end to end: a small real MCP server (the SDK's ``MCPServer``
on uvicorn, streamable HTTP, behind a bearer token) started by the test; alice adds it to her
settings; an agent of hers (and chat, through that agent) calls its tool on the bundled model;
the bearer token reaches the MCP server and never the kernel.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any, Literal

import httpx
import nbformat
import pytest
import uvicorn
from mcp.server.mcpserver import MCPServer
from nbformat import v4
from starlette.responses import JSONResponse

from tests.harness import User, free_port, wait_for

TOKEN = "mcp-bearer-3f9a1c77e2"
ENVELOPE = {"message", "reason", "type"}


@dataclass
class Ledger:
    url: str
    authorizations: list[str] = field(default_factory=list)
    calls: list[str] = field(default_factory=list)


@pytest.fixture(scope="module")
async def ledger() -> AsyncIterator[Ledger]:
    server: MCPServer[Any] = MCPServer("ledger")
    port = free_port()
    out = Ledger(url=f"http://127.0.0.1:{port}/mcp")

    @server.tool()
    def city_code(city: Literal["quito"]) -> str:
        """The ledger's code for a city."""
        out.calls.append(city)
        return "QX-4417"

    app = server.streamable_http_app(stateless_http=True, json_response=True)

    async def guarded(scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] == "http":
            given = dict(scope["headers"]).get(b"authorization", b"").decode()
            out.authorizations.append(given)
            if given != f"Bearer {TOKEN}":
                await JSONResponse({"error": "unauthorized"}, 401)(scope, receive, send)
                return
        await app(scope, receive, send)

    config = uvicorn.Config(guarded, host="127.0.0.1", port=port, log_level="warning")
    uv = uvicorn.Server(config)
    task = asyncio.create_task(uv.serve())
    await wait_for(lambda: _started(uv), 30, "the test's MCP server")
    try:
        yield out
    finally:
        uv.should_exit = True
        await asyncio.wait_for(task, 30)


async def _started(uv: uvicorn.Server) -> bool:
    return uv.started


def base(user: User) -> str:
    return f"/user/{user.name}/api/v1/mcp/servers"


async def test_configure_a_server_and_its_token_stays_out_of_the_kernel(
    alice: User, ledger: Ledger
) -> None:
    body = {"name": "ledger", "url": ledger.url, "bearer_token": TOKEN, "description": "codes"}
    r = await alice.api("POST", base(alice), json=body)
    assert r.status_code == 201, r.text
    assert r.headers["location"] == f"{base(alice)}/ledger"
    assert r.json() == {
        "name": "ledger",
        "url": ledger.url,
        "description": "codes",
        "has_token": True,
    }
    r = await alice.api("GET", base(alice))
    assert r.json()["servers"] == [
        {"name": "ledger", "url": ledger.url, "description": "codes", "has_token": True}
    ]
    assert TOKEN not in r.text
    r = await alice.api("GET", f"{base(alice)}/ledger/tools")
    assert r.status_code == 200, r.text
    assert [t["name"] for t in r.json()["tools"]] == ["city_code"]
    assert ledger.authorizations[-1] == f"Bearer {TOKEN}"

    # from the kernel's side: not in its environment, not in any file of the home, not in the
    # API's answers to its token, and the model service refuses its token the secret
    probe = (
        "import json, os, httpx\n"
        "found = [k for k, v in os.environ.items() if TOKEN in v]\n"
        "for top, dirs, files in os.walk(os.path.expanduser('~')):\n"
        "    for f in files:\n"
        "        try:\n"
        "            with open(os.path.join(top, f), 'rb') as fh:\n"
        "                if TOKEN.encode() in fh.read(5_000_000): found.append(f)\n"
        "        except OSError: pass\n"
        "auth = {'Authorization': 'token ' + os.environ['ORACULO_KERNEL_TOKEN']}\n"
        "server, models = os.environ['ORACULO_SERVER_URL'], os.environ['ORACULO_MODELS_URL']\n"
        "api = httpx.get(server + 'api/v1/mcp/servers', headers=auth)\n"
        "sec = httpx.get(models + 'v1/secrets/mcp:ledger', headers=auth)\n"
        "print(json.dumps({'found': found, 'api': api.status_code, 'api_has': TOKEN in api.text,\n"
        "    'secret': sec.status_code, 'secret_has': TOKEN in sec.text}))\n"
    )
    r = await alice.api(
        "POST",
        f"/user/{alice.name}/api/v1/execute",
        json={"code": f"TOKEN = {TOKEN!r}\n{probe}"},
        timeout=120,
    )
    assert r.status_code == 200, r.text
    out = r.json()
    assert out["status"] == "ok", out
    seen = json.loads(out["stdout"].strip().splitlines()[-1])
    assert seen == {"found": [], "api": 200, "api_has": False, "secret": 403, "secret_has": False}


async def test_an_agent_and_chat_use_the_servers_tool(alice: User, ledger: Ledger) -> None:
    r = await alice.api(
        "POST", base(alice), json={"name": "ledger", "url": ledger.url, "bearer_token": TOKEN}
    )
    assert r.status_code in (200, 201), r.text
    nb = v4.new_notebook(
        cells=[v4.new_markdown_cell("You look up ledger codes with the ledger__city_code tool.")],
        metadata={
            "oraculo": {
                "agent": {
                    "name": "ledger-agent",
                    "mcp": ["ledger"],
                    "require_tool": True,
                    "max_steps": 2,
                    "temperature": 0.0,
                }
            }
        },
    )
    r = await alice.api(
        "PUT",
        f"/user/{alice.name}/api/contents/agents/ledger-agent.ipynb",
        json={"type": "notebook", "content": json.loads(nbformat.writes(nb))},
    )
    assert r.status_code in (200, 201), r.text
    before = len(ledger.calls)
    r = await alice.api(
        "POST",
        f"/user/{alice.name}/api/v1/agents/runs",
        json={"goal": "What is the ledger code of Quito?", "agents": ["ledger-agent"]},
    )
    assert r.status_code == 201, r.text
    events = await follow(alice, r.json()["id"])
    call = next(e for e in events if e["type"] == "tool_call")
    result = next(e for e in events if e["type"] == "tool_result")
    assert call["tool"] == "ledger__city_code" and call["arguments"] == {"city": "quito"}
    assert result["error"] is None and result["content"] == "QX-4417", result
    calls = [e for e in events if e["type"] == "tool_call"]
    assert ledger.calls[before:] == ["quito"] * len(calls)  # each call reached the server
    before = len(ledger.calls)

    # chat: the agent answers as the model "agent:ledger-agent", after calling the tool
    r = await alice.api(
        "POST",
        f"/user/{alice.name}/api/v1/chat/completions",
        json={
            "model": "agent:ledger-agent",
            "messages": [{"role": "user", "content": "What is the ledger code of Quito?"}],
        },
        timeout=300,
    )
    assert r.status_code == 200, r.text
    assert ledger.calls[before:] and set(ledger.calls[before:]) == {"quito"}

    # a wrong token: the tool call is an error the agent sees, nothing breaks
    r = await alice.api(
        "POST", base(alice), json={"name": "ledger", "url": ledger.url, "bearer_token": "nope"}
    )
    assert r.status_code == 200
    r = await alice.api("GET", f"{base(alice)}/ledger/tools")
    assert r.status_code == 503 and set(r.json()) == ENVELOPE, r.text
    assert "nope" not in r.text


async def follow(user: User, run_id: str, timeout: float = 300) -> list[dict[str, Any]]:
    events: list[dict[str, Any]] = []
    url = f"/user/{user.name}/api/v1/agents/runs/{run_id}/events"
    async with user.client.http.stream(
        "GET", url, headers=user.auth, timeout=httpx.Timeout(timeout)
    ) as r:
        assert r.status_code == 200
        async for line in r.aiter_lines():
            if line.startswith("data: "):
                events.append(json.loads(line[6:]))
    assert events and events[-1]["type"] == "run_finished", events[-3:]
    return events


async def test_bad_input_and_other_users_are_refused(alice: User, mallory: User) -> None:
    for body in [
        {"name": "bad name", "url": "http://127.0.0.1:1/mcp"},
        {"name": "x", "url": "file:///etc/passwd"},
        {"name": "x", "url": "http://127.0.0.1:1/mcp", "bearer_token": "a\nb"},
        {"name": "x", "url": "http://127.0.0.1:1/mcp", "surprise": 1},
    ]:
        r = await alice.api("POST", base(alice), json=body)
        assert r.status_code == 400 and set(r.json()) == ENVELOPE, (body, r.text)
    r = await alice.api("DELETE", f"{base(alice)}/nobody")
    assert r.status_code == 404 and set(r.json()) == ENVELOPE
    r = await alice.api("GET", f"{base(alice)}/nobody/tools")
    assert r.status_code == 404
    # a server that does not answer is a 503 that says which
    r = await alice.api("POST", base(alice), json={"name": "down", "url": "http://127.0.0.1:9/mcp"})
    assert r.status_code == 201
    r = await alice.api("GET", f"{base(alice)}/down/tools")
    assert r.status_code == 503 and "down" in r.json()["message"]
    r = await alice.api("DELETE", f"{base(alice)}/down")
    assert r.status_code == 204
    calls = [
        ("GET", base(alice), None),
        ("POST", base(alice), {"name": "evil", "url": "http://127.0.0.1:1/mcp"}),
        ("DELETE", f"{base(alice)}/ledger", None),
        ("GET", f"{base(alice)}/ledger/tools", None),
    ]
    async with httpx.AsyncClient(base_url=alice.client.hub.url) as bare:
        for method, path, body in calls:
            r = await bare.request(method, path, json=body, headers=mallory.auth)
            assert r.status_code == 403, (method, path, r.status_code)
            r = await bare.request(method, path, json=body)
            assert r.status_code in (302, 401, 403), (method, path, r.status_code)
        # nor may mallory read alice's secret from the model service with her own token
        r = await bare.get("/services/models/v1/secrets/mcp:ledger", headers=mallory.auth)
        assert r.status_code == 404, r.text
