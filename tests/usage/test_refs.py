"""An agent run's model requests carry its run id to the model service, so the usage rows (and
the Usage panel's "Most expensive" list) count the run as one thing; a real run on the session
hub (the agent tests' agents, the bundled chat model)."""

from __future__ import annotations

import httpx

from oraculo.models.usage import EVENT_COLUMNS
from tests.extensions.agents.test_agents import follow, setup_agents, start
from tests.harness import User


async def test_an_agent_runs_model_requests_carry_its_run_id(alice: User) -> None:
    await setup_agents(alice)
    run = await start(alice, goal="Plan a picnic in one line.", agents=["planner"])
    events = await follow(alice, run["id"])
    assert events and events[-1].get("status"), events[-1:]
    async with httpx.AsyncClient(timeout=30) as c:
        r = await c.get(
            f"{alice.client.hub.url}/services/models/v1/usage/events", headers=alice.auth
        )
    assert r.status_code == 200, r.text
    ref, tokens = EVENT_COLUMNS.index("ref"), EVENT_COLUMNS.index("prompt_tokens")
    mine = [row for row in r.json()["rows"] if row[ref] == f"run:{run['id']}"]
    assert mine, "no usage row names the run"
    assert sum(row[tokens] for row in mine) > 0
