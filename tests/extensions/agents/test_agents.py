"""Agents end to end: agent notebooks in alice's home, runs on the bundled model through the
session hub, tools run in her sandbox kernel; events over SSE; bounds, cancel, errors, isolation.
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path
from typing import Any

import httpx
import nbformat
import pytest
from nbformat import v4

from tests.harness import ADMIN_PASSWORD, HubClient, User, signed_in_panel, wait_for

NOTEBOOKS = Path(__file__).resolve().parents[3] / "notebooks"
ENVELOPE = {"message", "reason", "type"}


def agent_notebook(name: str, instructions: str, tools: list[str], **meta: Any) -> dict[str, Any]:
    cells = [v4.new_markdown_cell(instructions)] + [v4.new_code_cell(src) for src in tools]
    agent = {"name": name, "max_steps": 3, "temperature": 0.0, **meta}
    return dict(v4.new_notebook(cells=cells, metadata={"oraculo": {"agent": agent}}))


PLANNER = agent_notebook(
    "planner", "You plan. Say in one short sentence which label the worker should record.", []
)
#: A lead that declares its handoff: a run of the lead alone goes on to the recorder.
LEAD = agent_notebook(
    "lead",
    "You lead. Say in one short sentence which label the recorder should record.",
    [],
    handoff="recorder",
)
WORKER = agent_notebook(
    "recorder",
    "You record labels with the record tool, then answer with what you recorded.",
    [
        '''def record(label: "Literal['alpha', 'beta']") -> str:
    """Record a label in the kernel's list agent_labels.

    Args:
        label: the label to record
    """
    global agent_labels
    agent_labels = [*globals().get("agent_labels", []), label]
    return f"recorded {label}; {len(agent_labels)} so far"'''
    ],
    require_tool=True,
    max_steps=2,
)
BREAKER = agent_notebook(
    "breaker",
    "Call explode.",
    [
        '''def explode(reason: "Literal['now']") -> str:
    """Always fails."""
    raise ValueError("boom: " + reason)'''
    ],
    require_tool=True,
    max_steps=2,
)


async def put_notebook(user: User, path: str, nb: dict[str, Any]) -> None:
    r = await user.api(
        "PUT",
        f"/user/{user.name}/api/contents/{path}",
        json={"type": "notebook", "format": "json", "content": nb},
    )
    assert r.status_code in (200, 201), r.text


async def api(user: User, method: str, path: str, **kw: Any) -> httpx.Response:
    return await user.api(method, f"/user/{user.name}/api/v1/agents{path}", timeout=60, **kw)


async def setup_agents(user: User) -> None:
    for folder in ("agents", "team"):
        r = await user.api(
            "PUT", f"/user/{user.name}/api/contents/{folder}", json={"type": "directory"}
        )
        assert r.status_code in (200, 201), r.text
    agents = {"planner": PLANNER, "lead": LEAD, "recorder": WORKER, "breaker": BREAKER}
    for name, nb in agents.items():
        await put_notebook(user, f"agents/{name}.ipynb", nb)


async def follow(user: User, run_id: str, timeout: float = 200) -> list[dict[str, Any]]:
    """The run's events over SSE, until it finishes."""
    events: list[dict[str, Any]] = []
    url = f"/user/{user.name}/api/v1/agents/runs/{run_id}/events"
    async with user.client.http.stream(
        "GET", url, headers=user.auth, timeout=httpx.Timeout(timeout)
    ) as r:
        assert r.status_code == 200
        assert r.headers["content-type"].startswith("text/event-stream")
        async for line in r.aiter_lines():
            if line.startswith("data: "):
                events.append(json.loads(line[6:]))
    assert events and events[-1]["type"] == "run_finished", events[-3:]
    assert [e["seq"] for e in events] == list(range(len(events)))
    return events


async def start(user: User, **body: Any) -> dict[str, Any]:
    r = await api(user, "POST", "/runs", json=body)
    assert r.status_code == 201, r.text
    run: dict[str, Any] = r.json()
    assert r.headers["location"].endswith(f"/api/v1/agents/runs/{run['id']}")
    return run


async def test_catalogue_lists_agent_notebooks(alice: User, mallory: User) -> None:
    await setup_agents(alice)
    team = nbformat.read(NOTEBOOKS / "team_data_cleaner_agent.ipynb", as_version=4)
    team.metadata.oraculo.agent.name = "team-cleaner"
    await put_notebook(alice, "team/data_cleaner.ipynb", dict(team))
    r = await api(alice, "GET", "")
    assert r.status_code == 200, r.text
    agents = {a["name"]: a for a in r.json()["agents"]}
    assert {"planner", "recorder", "breaker"} <= set(agents)
    assert agents["recorder"]["tools"] == ["record"]
    assert agents["recorder"]["owner"] and agents["recorder"]["version"]
    assert agents["recorder"]["path"] == "agents/recorder.ipynb"
    # the example agent was copied into ~/agents at her first start
    assert agents["data-cleaner"]["path"] == "agents/team_data_cleaner_agent.ipynb"
    # a notebook is found anywhere under the home
    cleaner = agents["team-cleaner"]
    assert cleaner["tools"] == ["profile", "drop_missing"] and len(cleaner["version"]) == 12
    assert cleaner["path"] == "team/data_cleaner.ipynb" and not cleaner["shared"]
    r = await api(alice, "GET", "/recorder")
    tool = r.json()["tools"][0]
    assert tool["parameters"] == {
        "type": "object",
        "properties": {"label": {"enum": ["alpha", "beta"], "description": "the label to record"}},
        "required": ["label"],
    }
    assert "def record" in tool["source"]
    # publishing: only to a group folder (alice has none here), never on another's server
    r = await mallory.api("POST", f"/user/{alice.name}/api/v1/agents/recorder/publish", json={})
    assert r.status_code in (403, 404), r.text
    r = await api(alice, "POST", "/recorder/publish", json={})
    assert r.status_code == 400 and set(r.json()) == ENVELOPE, r.text
    assert "group folder" in r.json()["message"]
    r = await api(alice, "POST", "/recorder/publish", json={"group": 3})
    assert r.status_code == 400 and set(r.json()) == ENVELOPE
    r = await api(
        alice, "POST", "/runs", json={"goal": "x", "agents": ["recorder"], "approve": "z"}
    )
    assert r.status_code == 400 and set(r.json()) == ENVELOPE
    # errors: unknown agent, bad run request; mallory's token is refused on alice's server
    r = await api(alice, "GET", "/nobody")
    assert r.status_code == 404 and set(r.json()) == ENVELOPE
    r = await api(alice, "POST", "/runs", json={"goal": "", "agents": ["planner"]})
    assert r.status_code == 400 and set(r.json()) == ENVELOPE
    r = await api(alice, "POST", "/runs", json={"goal": "x", "agents": ["nobody"]})
    assert r.status_code == 404 and set(r.json()) == ENVELOPE
    r = await mallory.api("GET", f"/user/{alice.name}/api/v1/agents")
    assert r.status_code in (403, 404)


async def test_multi_agent_run_calls_a_notebook_tool_in_the_kernel(alice: User) -> None:
    await setup_agents(alice)
    run = await start(alice, goal="Record the label alpha.", agents=["lead"])
    assert run["agents"] == ["lead", "recorder"]  # the lead's declared handoff
    events = await follow(alice, run["id"])
    kinds = [e["type"] for e in events]
    assert kinds[0] == "run_started" and "tool_call" in kinds and "tool_result" in kinds
    # typed messages: goal to the planner, the planner's answer to the recorder
    inputs = [(e["from"], e["to"]) for e in events if e.get("kind") == "input"]
    assert inputs[:2] == [("user", "lead"), ("lead", "recorder")]
    call = next(e for e in events if e["type"] == "tool_call")
    result = next(e for e in events if e["type"] == "tool_result")
    assert call["agent"] == "recorder" and call["tool"] == "record"
    # the call streamed while the model wrote it: its name first, then its arguments in pieces,
    # all before the model's reply was whole (the reply message) and the call started
    deltas = [e for e in events if e["type"] == "tool_call_delta" and e["tool"] == "record"]
    assert deltas and deltas[0]["agent"] == "recorder" and deltas[0]["call_id"] == call["call_id"]
    reply = next(
        e
        for e in events
        if e["type"] == "message"
        and any(c["id"] == call["call_id"] for c in e.get("tool_calls") or [])
    )
    assert deltas[0]["seq"] < reply["seq"] < call["seq"]
    assert deltas[0]["arguments"] != deltas[-1]["arguments"]  # the first was partial
    assert json.loads(deltas[-1]["arguments"]) == call["arguments"]
    assert "def record" in call["code"] and result["error"] is None
    assert "recorded" in result["content"]
    final = events[-1]
    assert final["status"] in ("succeeded", "bounded"), final
    # the tool's effect is in the kernel the notebook and /api/v1/execute share
    r = await alice.api(
        "POST",
        f"/user/{alice.name}/api/v1/execute",
        json={"code": "print(sorted(set(agent_labels)))"},
        timeout=60,
    )
    assert r.status_code == 200 and r.json()["status"] == "ok", r.text
    assert call["arguments"]["label"] in r.json()["stdout"]
    # audited with the agent as origin
    r = await alice.api(
        "GET", f"/user/{alice.name}/api/v1/execute/audit?execution_id={result['execution_id']}"
    )
    assert r.status_code == 200, r.text
    spec = await api(alice, "GET", "/recorder")
    assert f"agent:recorder@{spec.json()['sha256']}" in r.text
    # the run: listed, with tokens and time per agent; exported as a notebook
    r = await api(alice, "GET", f"/runs/{run['id']}")
    body = r.json()
    assert body["per_agent"]["recorder"]["tool_calls"] >= 1
    assert body["per_agent"]["lead"]["tokens"] > 0
    # the typed messages: goal, replies with tool calls, tool results, handover
    r = await api(alice, "GET", f"/runs/{run['id']}/messages")
    msgs = r.json()["messages"]
    assert (msgs[0]["from"], msgs[0]["to"], msgs[0]["kind"]) == ("user", "lead", "input")
    calls = [m for m in msgs if m["kind"] == "reply" and m["from"] == "recorder"]
    assert calls[0]["tool_calls"][0]["function"]["name"] == "record"
    tool = next(m for m in msgs if m["kind"] == "tool")
    assert tool["from"] == "tool:record" and tool["to"] == "recorder"
    assert tool["tool_call_id"] == calls[0]["tool_calls"][0]["id"]
    r = await api(alice, "GET", f"/runs/{run['id']}/notebook")
    nb = nbformat.reads(r.text, as_version=4)
    nbformat.validate(nb)
    assert any(c.cell_type == "code" and "def record" in c.source for c in nb.cells)
    r = await api(alice, "GET", "/runs")
    assert run["id"] in [x["id"] for x in r.json()["runs"]]


def counter(name: str) -> dict[str, Any]:
    """A worker of the fan-out: one tool that takes a second in the kernel."""
    return agent_notebook(
        name,
        "You count words with the tally tool, then answer with the count.",
        [
            f'''def tally(words: "Literal['two words']") -> str:
    """Count the words, slowly.

    Args:
        words: the words to count
    """
    import time
    time.sleep(1.0)
    return "{name} counted " + str(len(words.split()))'''
        ],
        require_tool=True,
        max_tool_calls=1,  # one call, then its answer: the run goes on to the gatherer
        max_steps=3,
    )


#: planner → (counter_a ∥ counter_b) → gatherer, declared in the dispatcher's metadata
DISPATCHER = agent_notebook(
    "dispatcher",
    "You dispatch. Say in one short sentence what the counters should count.",
    [],
    fan_out=["counter_a", "counter_b"],
    handoff="gatherer",
)
GATHERER = agent_notebook(
    "gatherer", "You gather the counters' answers into one short sentence.", [], max_steps=2
)


async def test_a_run_fans_out_to_parallel_workers(alice: User, mallory: User) -> None:
    """The dispatcher's declared fan-out: both counters get its answer at once and their model
    calls are in flight together (the second starts before the first is answered); each tool call
    streams as it starts, before its result; the gatherer gets both answers."""
    await setup_agents(alice)
    agents = {"dispatcher": DISPATCHER, "gatherer": GATHERER}
    agents |= {n: counter(n) for n in ("counter_a", "counter_b")}
    for name, nb in agents.items():
        await put_notebook(alice, f"agents/{name}.ipynb", nb)
    r = await api(alice, "GET", "/dispatcher")
    assert r.json()["fan_out"] == ["counter_a", "counter_b"], r.text
    run = await start(alice, goal="Count the words 'two words'.", agents=["dispatcher"])
    assert run["agents"] == ["dispatcher", "counter_a", "counter_b", "gatherer"]
    assert run["stages"] == [["dispatcher"], ["counter_a", "counter_b"], ["gatherer"]]
    r = await mallory.api("GET", f"/user/{alice.name}/api/v1/agents/runs/{run['id']}")
    assert r.status_code in (403, 404), r.text
    r = await api(mallory, "GET", f"/runs/{run['id']}")
    assert r.status_code == 404 and set(r.json()) == ENVELOPE

    # the events over SSE, with when each arrived here
    arrived: dict[int, float] = {}
    events: list[dict[str, Any]] = []
    url = f"/user/{alice.name}/api/v1/agents/runs/{run['id']}/events"
    async with alice.client.http.stream(
        "GET", url, headers=alice.auth, timeout=httpx.Timeout(300)
    ) as resp:
        async for line in resp.aiter_lines():
            if line.startswith("data: "):
                ev = json.loads(line[6:])
                arrived[ev["seq"]] = time.monotonic()
                events.append(ev)
    assert events[-1]["type"] == "run_finished", events[-3:]
    (fan,) = [e for e in events if e["type"] == "fan_out"]
    assert fan["from"] == "dispatcher" and fan["to"] == ["counter_a", "counter_b"]
    inputs = [e for e in events if e.get("kind") == "input" and e["from"] == "dispatcher"]
    assert [e["to"] for e in inputs] == ["counter_a", "counter_b"]
    assert all(e["seq"] > fan["seq"] for e in inputs)

    # the branches overlap: each counter's first model call starts before either is answered
    def first(kind: str, agent: str, key: str = "agent") -> dict[str, Any]:
        return next(e for e in events if e["type"] == kind and e.get(key) == agent)

    starts = [first("step_started", n) for n in ("counter_a", "counter_b")]
    replies = [
        next(e for e in events if e.get("kind") == "reply" and e["from"] == n)
        for n in ("counter_a", "counter_b")
    ]
    assert max(e["seq"] for e in starts) < min(e["seq"] for e in replies), [
        (e["seq"], e["type"], e.get("agent") or e.get("from")) for e in events
    ]
    # so the stage took less than its two model calls one after the other
    both = max(e["unix"] for e in replies) - min(e["unix"] for e in starts)
    assert both < sum(e["seconds"] for e in replies), (both, [e["seconds"] for e in replies])
    took = " + ".join(f"{e['seconds']:.2f}" for e in replies)
    print(f"fan-out: both model calls done in {both:.2f} s; one after the other: {took} s")

    # each tool call streamed as it started, a second before its result
    results = {e["call_id"]: e for e in events if e["type"] == "tool_result"}
    for call in [e for e in events if e["type"] == "tool_call"]:
        result = results[call["call_id"]]  # every call has its result, a stopped one too
        assert result["seq"] > call["seq"]
        if result["error"] is None:
            assert arrived[result["seq"]] - arrived[call["seq"]] >= 0.9, (call, result)
    calls = {e["agent"] for e in events if e["type"] == "tool_call"}
    assert calls == {"counter_a", "counter_b"}, calls

    # the gatherer got both answers at once, and answered the run
    final = events[-1]
    assert final["status"] == "succeeded", final
    finished = {e["agent"]: e["answer"] for e in events if e["type"] == "agent_finished"}
    assert set(finished) == {"counter_a", "counter_b", "dispatcher", "gatherer"}
    gathered = next(e for e in events if e.get("kind") == "input" and e["to"] == "gatherer")
    assert gathered["from"] == "counter_a, counter_b"
    assert gathered["seq"] > max(
        e["seq"] for e in events if e["type"] == "agent_finished" and e["agent"] != "gatherer"
    )
    for n in ("counter_a", "counter_b"):
        assert f"{n} says:\n{finished[n]}" in gathered["content"]
    assert final["answer"] == finished["gatherer"]
    # each counter called its tool once, then was offered only final_answer
    r = await api(alice, "GET", f"/runs/{run['id']}")
    per_agent = r.json()["per_agent"]
    assert [per_agent[n]["tool_calls"] for n in ("counter_a", "counter_b")] == [1, 1]
    r = await api(alice, "GET", f"/runs/{run['id']}")
    body = r.json()
    assert body["stages"] == run["stages"] and body["working"] == []
    assert set(body["finished_agents"]) == set(finished)
    r = await api(alice, "GET", f"/runs/{run['id']}/notebook")
    nb = nbformat.reads(r.text, as_version=4)
    assert any("in parallel: counter_a ∥ counter_b" in c.source for c in nb.cells)


async def test_a_tool_that_raises(alice: User) -> None:
    await setup_agents(alice)
    run = await start(alice, goal="Explode.", agents=["breaker"])
    events = await follow(alice, run["id"])
    result = next(e for e in events if e["type"] == "tool_result")
    assert result["error"]["name"] == "ValueError" and "boom" in result["error"]["value"]
    assert result["content"].startswith("Error: ValueError")
    assert events[-1]["status"] in ("succeeded", "bounded")  # the run goes on after the error


async def test_step_bound(alice: User) -> None:
    await setup_agents(alice)
    run = await start(alice, goal="Record beta.", agents=["planner", "recorder"], max_steps=1)
    events = await follow(alice, run["id"])
    final = events[-1]
    assert final["status"] == "bounded" and "step bound of 1" in final["reason"]
    assert sum(1 for e in events if e.get("kind") == "reply") == 1


async def test_cancel_and_other_users(alice: User, mallory: User) -> None:
    await setup_agents(alice)
    run = await start(alice, goal="Record alpha twice.", agents=["planner", "recorder"])
    # mallory: refused on alice's server; on her own, alice's run does not exist
    for method, path in (
        ("GET", ""),
        ("POST", "/cancel"),
        ("GET", "/events"),
        ("GET", "/messages"),
        ("GET", "/notebook"),
    ):
        r = await mallory.api(method, f"/user/{alice.name}/api/v1/agents/runs/{run['id']}{path}")
        assert r.status_code in (403, 404), r.text
        r = await api(mallory, method, f"/runs/{run['id']}{path}")
        assert r.status_code == 404 and set(r.json()) == ENVELOPE
    r = await api(mallory, "GET", "/runs")
    assert run["id"] not in [x["id"] for x in r.json()["runs"]]
    r = await api(alice, "POST", f"/runs/{run['id']}/cancel")
    assert r.status_code == 200 and r.json()["status"] == "cancelled", r.text
    events = await follow(alice, run["id"])
    assert events[-1]["status"] == "cancelled"
    r = await api(alice, "POST", f"/runs/{run['id']}/cancel")  # idempotent
    assert r.json()["status"] == "cancelled"

    async def listed_cancelled() -> bool:
        r = await api(alice, "GET", "/runs")
        return any(x["id"] == run["id"] and x["status"] == "cancelled" for x in r.json()["runs"])

    await wait_for(listed_cancelled, 10, "the cancelled run in the list")


SLEEPER = agent_notebook(
    "sleeper",
    "Call nap.",
    [
        '''def nap(how: "Literal['long']") -> str:
    """Sleep for two minutes."""
    import time
    time.sleep(120)
    return "rested"'''
    ],
    require_tool=True,
    max_steps=1,
)


async def test_cancel_stops_the_tool_running_in_the_kernel(alice: User) -> None:
    await setup_agents(alice)
    await put_notebook(alice, "agents/sleeper.ipynb", SLEEPER)
    run = await start(alice, goal="Take a nap.", agents=["sleeper"])

    async def audited(event: str) -> dict[str, Any] | None:
        r = await alice.api("GET", f"/user/{alice.name}/api/v1/execute/audit")
        for rec in r.json()["records"]:
            if rec["event"] == event and rec["origin"].startswith("agent:sleeper@"):
                return dict(rec)
        return None

    started = await wait_for(
        lambda: audited("started"), 120, "the agent's tool to start in the kernel"
    )
    assert started["run_id"] == run["id"], started  # the audit names the run
    r = await api(alice, "POST", f"/runs/{run['id']}/cancel")
    assert r.status_code == 200 and r.json()["status"] == "cancelled", r.text
    # the nap is interrupted in the kernel, not left to run out its two minutes
    finished = await wait_for(lambda: audited("finished"), 20, "the tool's execution to stop")
    assert finished["status"] == "cancelled" and finished["run_id"] == run["id"], finished
    r = await alice.api(
        "POST", f"/user/{alice.name}/api/v1/execute", json={"code": "1 + 1"}, timeout=30
    )
    assert r.json()["results"] == [{"text/plain": "2"}], r.text


async def test_a_message_to_a_running_agent(alice: User, mallory: User) -> None:
    await setup_agents(alice)
    await put_notebook(alice, "agents/sleeper.ipynb", SLEEPER)
    run = await start(alice, goal="Take a nap.", agents=["sleeper"])
    path = f"/runs/{run['id']}/messages"
    r = await api(alice, "POST", path, json={"content": "Wake up after the nap."})
    assert r.status_code == 201, r.text
    note = r.json()
    assert (note["kind"], note["from"], note["to"]) == ("note", alice.name, "sleeper")
    for bad in ({}, {"content": ""}, {"content": "x", "to": "nobody"}, {"content": 3}):
        r = await api(alice, "POST", path, json=bad)
        assert r.status_code == 400 and set(r.json()) == ENVELOPE, (bad, r.text)
    r = await api(mallory, "POST", path, json={"content": "hi"})
    assert r.status_code == 404 and set(r.json()) == ENVELOPE
    r = await mallory.api("POST", f"/user/{alice.name}/api/v1/agents{path}", json={"content": "hi"})
    assert r.status_code in (403, 404), r.text
    r = await api(alice, "GET", path)
    notes = [m for m in r.json()["messages"] if m["kind"] == "note"]
    assert [(m["from"], m["content"]) for m in notes] == [(alice.name, "Wake up after the nap.")]
    await api(alice, "POST", f"/runs/{run['id']}/cancel")
    r = await api(alice, "POST", path, json={"content": "too late"})
    assert r.status_code == 409 and "finished" in r.json()["message"], r.text


async def test_a_run_resumes_after_a_server_restart(alice: User) -> None:
    await setup_agents(alice)
    run = await start(alice, goal="Record beta.", agents=["planner", "recorder"])
    await alice.stop_server()  # the run is mid-way: its first model call is in flight
    await alice.spawn()

    async def finished() -> dict[str, Any] | None:
        r = await api(alice, "GET", f"/runs/{run['id']}")
        if r.status_code != 200:  # not loaded yet: the server resumes runs once it is up
            return None
        body: dict[str, Any] = r.json()
        return body if body["status"] != "running" else None

    body = await wait_for(finished, 200, "the resumed run to finish", 0.5)
    kinds = [e["type"] for e in body["events"]]
    assert "resumed" in kinds, kinds
    assert body["status"] in ("succeeded", "bounded"), body["reason"]
    assert kinds.count("run_started") == 1 and kinds[-1] == "run_finished"


@pytest.mark.browser
async def test_backstage_follows_a_live_run(alice: User, artifacts: Path) -> None:
    from playwright.async_api import expect

    await setup_agents(alice)
    async with signed_in_panel(alice, "backstage", {"width": 1300, "height": 900}) as panel:
        page = panel.page
        root = page.get_by_test_id("oraculo-backstage")
        await expect(root).to_be_visible(timeout=90_000)
        # a run started now (here through the API) is picked up and followed live
        run = await start(alice, goal="Record the label beta.", agents=["planner", "recorder"])
        await expect(root).to_have_attribute("data-run", run["id"], timeout=30_000)
        states: list[str | None] = []

        async def finished() -> bool:
            state = await root.get_attribute("data-state")
            if not states or states[-1] != state:
                states.append(state)
            return state in ("succeeded", "bounded", "failed", "cancelled")

        await wait_for(finished, 200, "the run to finish in Backstage", 0.05)
        assert "running" in states and states[-1] in ("succeeded", "bounded"), states
        nodes = page.get_by_test_id("backstage-node")
        await expect(nodes).to_have_count(2)
        await expect(nodes.nth(0)).to_have_attribute("data-agent", "planner")
        await expect(nodes.nth(1)).to_contain_text("tokens")
        calls = page.locator("[data-testid=backstage-event][data-type=tool_call]")
        await expect(calls.first).to_contain_text("def record")
        # the call as the model wrote it, before it ran
        writing = page.locator(
            "[data-testid=backstage-event][data-type=tool_call_delta]",
            has_text="recorder writes record(",
        )
        await expect(writing.first).to_be_visible()
        kinds = await page.locator("[data-testid=backstage-event]").evaluate_all(
            "els => els.map(e => e.dataset.type + ' ' + e.textContent)"
        )
        first_writing = next(i for i, k in enumerate(kinds) if "writes record(" in k)
        first_call = next(i for i, k in enumerate(kinds) if k.startswith("tool_call "))
        assert first_writing < first_call, kinds
        results = page.locator("[data-testid=backstage-event][data-type=tool_result]")
        await expect(results.first).to_contain_text("recorded")
        await expect(page.get_by_test_id("backstage-message").first).to_contain_text(
            "user → planner"
        )
        await page.screenshot(path=str(artifacts / "backstage-panel.png"), full_page=True)
        async with page.expect_download() as info:
            await page.locator(".oraculo-backstage-export button").click()
        download = await info.value
        nb = nbformat.reads(Path(await download.path()).read_text(), as_version=4)
        assert any("def record" in c.source for c in nb.cells if c.cell_type == "code")
        # a message to a running agent, then Cancel, from the panel
        await put_notebook(alice, "agents/sleeper.ipynb", SLEEPER)
        nap = await start(alice, goal="Take a nap.", agents=["sleeper"])
        await expect(root).to_have_attribute("data-run", nap["id"], timeout=30_000)
        await page.locator(".oraculo-backstage-say input").fill("Wake up gently.")
        await page.locator(".oraculo-backstage-send button").click()
        note = page.locator("[data-testid=backstage-event][data-kind=note]")
        await expect(note).to_contain_text("Wake up gently.", timeout=30_000)
        await expect(note).to_contain_text(f"{alice.name} → sleeper")
        await page.screenshot(path=str(artifacts / "backstage-message.png"), full_page=True)
        await page.locator(".oraculo-backstage-cancel button").click()
        await expect(root).to_have_attribute("data-state", "cancelled", timeout=60_000)
        outcome = page.get_by_test_id("backstage-outcome").first
        await expect(outcome).to_have_attribute("data-outcome", "cancelled")
        await expect(page.get_by_test_id("backstage-note")).to_contain_text("Run cancelled.")
    assert not panel.offsite(), panel.offsite()
    assert not panel.bad, panel.bad


async def _execute_notebook(nb: Any, env: dict[str, str], extension: bool = False) -> None:
    from nbclient import NotebookClient

    saved = {k: os.environ.get(k) for k in env}
    os.environ.update(env)  # what the kernel provisioner gives every oraculo kernel
    try:
        args = ["--IPKernelApp.extensions=oraculo.kernels.ipython"] if extension else []
        client = NotebookClient(
            nb, kernel_name="python3", extra_arguments=args, timeout=180, allow_errors=False
        )
        await client.async_execute()
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


def _stream(cell: Any) -> str:
    return "".join(o.get("text", "") for o in cell.outputs if o.output_type == "stream")


async def test_example_notebooks_run(alice: User) -> None:
    hub = alice.client.hub
    # the team's agent notebook: its own try-it cells use the tools by hand
    team = nbformat.read(NOTEBOOKS / "team_data_cleaner_agent.ipynb", as_version=4)
    await _execute_notebook(team, {})
    assert "dropped 2 of 4 rows" in _stream(team.cells[-1])
    # the analyst's: %%chat about a polars dataframe, through alice's server and the model
    analyst = nbformat.read(NOTEBOOKS / "analyst_chat_with_polars.ipynb", as_version=4)
    token = await alice.client.token(alice.name, scopes=[f"access:servers!server={alice.name}/"])
    env = {"ORACULO_SERVER_URL": f"{hub.url}/user/{alice.name}/", "ORACULO_KERNEL_TOKEN": token}
    await _execute_notebook(analyst, env, extension=True)
    chat = [c for c in analyst.cells if c.cell_type == "code" and "%%chat" in c.source]
    for cell in chat:
        reply, _, footer = _stream(cell).rpartition("\n\n— ")
        assert reply.strip() and "variables: sales" in footer, _stream(cell)
    # the educator's: a cohort with its students and policy, through the hub's cohort API
    admin = HubClient(hub)
    try:
        await admin.login("admin", ADMIN_PASSWORD)
        env = {
            "JUPYTERHUB_API_URL": f"{hub.url}/hub/api",
            "ORACULO_ADMIN_TOKEN": await admin.token("admin"),
            "COHORT": "cohort-test",
            "STUDENTS": "stu-ada,stu-linus",
        }
        educator = nbformat.read(NOTEBOOKS / "educator_cohort_setup.ipynb", as_version=4)
        await _execute_notebook(educator, env)
        r = await admin.http.get(
            f"{hub.url}/hub/api/groups/cohort-test",
            headers={"Authorization": f"token {env['ORACULO_ADMIN_TOKEN']}"},
        )
        group = r.json()
        assert sorted(group["users"]) == ["stu-ada", "stu-linus"]
        assert group["properties"]["oraculo_policy"]["sandbox"]["memory_mb"] == 2048
        assert group["properties"]["oraculo_policy"]["agents"] is False
        assert "stu-ada: server stopped" in _stream(educator.cells[-1])
        assert "AI now: available" in _stream(educator.cells[-1])
    finally:
        await admin.aclose()


async def test_an_agent_as_a_chat_model(alice: User) -> None:
    await setup_agents(alice)
    url = f"/user/{alice.name}/api/v1/chat"
    body = {"model": "agent:planner", "messages": [{"role": "user", "content": "Plan a picnic."}]}
    r = await alice.api("POST", url, json=body, timeout=200)
    assert r.status_code == 200, r.text
    reply = r.json()
    assert reply["object"] == "chat.completion" and reply["model"] == "agent:planner"
    assert reply["choices"][0]["message"]["content"]
    run_id = reply["oraculo"]["agent_run"]["id"]
    r = await api(alice, "GET", f"/runs/{run_id}")
    assert r.json()["agents"] == ["planner"] and r.json()["status"] == "succeeded"
    # streamed: chunks in OpenAI's shape, ending with a finish reason
    chunks = []
    async with alice.client.http.stream(
        "POST", url, headers=alice.auth, json={**body, "stream": True}, timeout=200
    ) as r:
        assert r.status_code == 200
        async for line in r.aiter_lines():
            if line.startswith("data: {"):
                chunks.append(json.loads(line[6:]))
    text = "".join(c["choices"][0]["delta"].get("content") or "" for c in chunks if c["choices"])
    assert text and chunks[-1]["choices"][0]["finish_reason"] == "stop"
    r = await alice.api("POST", url, json={**body, "model": "agent:nobody"})
    assert r.status_code == 404 and set(r.json()) == ENVELOPE


async def test_catalogue_own_and_shared_folders(tmp_path: Path) -> None:
    """The catalogue in process: own agents anywhere under the root, shared ones from the
    group folders, own names first; tools' schemas from signatures and docstrings."""
    from oraculo.extensions.agents.service import AgentsService
    from oraculo.extensions.base.modelclient import ModelClient

    home, shared = tmp_path / "home", tmp_path / "shared" / "team-a"
    (home / "agents").mkdir(parents=True)
    (home / "projects" / "q3").mkdir(parents=True)
    shared.mkdir(parents=True)
    nbformat.write(nbformat.from_dict(WORKER), home / "agents" / "recorder.ipynb")
    nbformat.write(nbformat.from_dict(PLANNER), home / "projects" / "q3" / "planner.ipynb")
    nbformat.write(nbformat.from_dict(PLANNER), shared / "planner.ipynb")  # own one wins
    team = nbformat.read(NOTEBOOKS / "team_data_cleaner_agent.ipynb", as_version=4)
    nbformat.write(team, shared / "cleaner.ipynb")
    nbformat.write(v4.new_notebook(), home / "not_an_agent.ipynb")
    svc = AgentsService(
        root_dir=str(home),
        user="ana",
        models=ModelClient(),
        execute=lambda: None,
        shared_dirs=[str(tmp_path / "shared")],
        runs_dir=str(tmp_path / "runs"),
    )
    agents = {a["name"]: a for a in await svc.list_agents()}
    assert set(agents) == {"recorder", "planner", "data-cleaner"}
    assert (
        agents["planner"]["path"] == "projects/q3/planner.ipynb" and not agents["planner"]["shared"]
    )
    cleaner = agents["data-cleaner"]
    assert cleaner["shared"] and cleaner["path"] == str(shared / "cleaner.ipynb")
    assert cleaner["owner"] and len(cleaner["version"]) == 12 and len(cleaner["sha256"]) == 64
    spec = await svc.agent("data-cleaner")
    assert [t.name for t in spec.tools] == ["profile", "drop_missing"]
    assert spec.tools[1].parameters == {
        "type": "object",
        "properties": {
            "how": {
                "enum": ["any", "all"],
                "default": "any",
                "description": '"any" drops a row with any missing value, "all" only rows '
                "missing everything",
            }
        },
    }
    assert spec.setup == ["import polars as pl"] and spec.require_tool
    assert "careful data-cleaning assistant" in spec.instructions
