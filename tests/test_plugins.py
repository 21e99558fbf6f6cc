"""Plugins through the real hub: ``examples/oraculo-example-plugin`` (a feature with one route,
an agent tool and a panel) and a broken plugin, each built and installed by pip into a folder of
this module's own that only its hub's servers see (``PYTHONPATH``), so nothing changes in the
venv that other tests use, and removing the folder undoes it.

- The example feature's route answers through the proxy, is in the server's OpenAPI document,
  and refuses another user's token.
- An agent notebook that opts into the plugin's ``word_count`` tool gets it, and a run of the
  bundled model calls it in the user's sandbox kernel.
- The plugin's panel is served by the panel server.
- The broken plugin (a module that does not import, in every group) is logged and skipped; the
  server, and every other plugin, go on.
"""

from __future__ import annotations

import asyncio
import json
import shutil
import subprocess
import sys
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from nbformat import v4

from tests.harness import REPO, HubClient, HubProcess, User, new_user, wait_for

EXAMPLE = REPO / "examples" / "oraculo-example-plugin"
BROKEN_PYPROJECT = """\
[build-system]
requires = ["setuptools>=68"]
build-backend = "setuptools.build_meta"

[project]
name = "oraculo-broken-plugin"
version = "0.0.1"

[project.entry-points."oraculo.features"]
broken = "oraculo_broken:BrokenFeature"

[project.entry-points."oraculo.agent_tools"]
broken_tool = "oraculo_broken:tool"

[project.entry-points."oraculo.panels"]
broken_panel = "oraculo_broken_missing_panel"

[tool.setuptools]
py-modules = ["oraculo_broken"]
"""
ENVELOPE = {"message", "reason", "type"}


def pip_install(source: Path, target: Path) -> None:
    """Build and install ``source`` into ``target`` with pip, offline, as a user would."""
    subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "install",
            "-q",
            "--no-deps",
            "--no-index",
            "--no-build-isolation",
            "--target",
            str(target),
            str(source),
        ],
        check=True,
        timeout=300,
        capture_output=True,
    )


@pytest.fixture(scope="module")
def site(tmp_path_factory: pytest.TempPathFactory) -> Path:
    work = tmp_path_factory.mktemp("plugins")
    site = work / "site"
    # copies, so that the build leaves nothing in the checkout
    example = work / "example"
    shutil.copytree(EXAMPLE, example)
    pip_install(example, site)
    broken = work / "broken"
    broken.mkdir()
    (broken / "pyproject.toml").write_text(BROKEN_PYPROJECT)
    (broken / "oraculo_broken.py").write_text('raise ImportError("this plugin is broken")\n')
    pip_install(broken, site)
    return site


@pytest.fixture(scope="module")
async def plugin_hub(
    site: Path, tmp_path_factory: pytest.TempPathFactory
) -> AsyncIterator[HubProcess]:
    hub = HubProcess(
        tmp_path_factory.mktemp("plugin-hub"), models=True, env={"PYTHONPATH": str(site)}
    )
    await hub.start()

    async def models_loaded() -> bool:
        async with httpx.AsyncClient(timeout=5) as c:
            r = await c.get(f"{hub.url}/services/models/health")
            return r.status_code == 200 and r.json().get("status") == "ok"

    try:
        await wait_for(models_loaded, 240, "the plugin hub's model service", 0.25)
        yield hub
    finally:
        hub.stop()


@pytest.fixture(scope="module")
async def users(plugin_hub: HubProcess) -> AsyncIterator[dict[str, User]]:
    client = HubClient(plugin_hub)
    try:
        out = {name: await new_user(client, name) for name in ("pia", "otto")}
        await asyncio.gather(*(u.spawn() for u in out.values()))
        yield out
    finally:
        await client.aclose()


async def test_the_example_feature_serves_its_route(users: dict[str, User]) -> None:
    pia, otto = users["pia"], users["otto"]
    r = await pia.api("GET", f"/user/{pia.name}/api/v1/example/greeting")
    assert r.status_code == 200, r.text
    assert r.json() == {
        "user": "pia",
        "greeting": "Hello, pia!",
        "plugin": "oraculo-example-plugin",
    }
    r = await otto.api("GET", f"/user/{pia.name}/api/v1/example/greeting")
    assert r.status_code == 403 and set(r.json()) == ENVELOPE
    doc = (await pia.api("GET", f"/user/{pia.name}/api/v1/openapi.json")).json()
    op = doc["paths"]["/api/v1/example/greeting"]["get"]
    assert op["summary"] == "A greeting from the example plugin"
    assert "Greeting" in doc["components"]["schemas"]
    # the built-in features are all there beside it
    r = await pia.api("GET", f"/user/{pia.name}/api/v1/status")
    assert r.status_code == 200


async def test_a_broken_plugin_is_logged_and_skipped(
    users: dict[str, User], plugin_hub: HubProcess
) -> None:
    log = plugin_hub.log_path.read_text(errors="replace")
    for group, name in (
        ("oraculo.features", "broken"),
        ("oraculo.agent_tools", "broken_tool"),
        ("oraculo.panels", "broken_panel"),
    ):
        if group == "oraculo.panels":
            # the panel server starts with the first visit to a panel
            pia = users["pia"]
            await pia.api("GET", f"/user/{pia.name}/oraculo-panels/hello_panel", timeout=120)
            log = plugin_hub.log_path.read_text(errors="replace")
        assert f"{group} plugin {name!r}" in log and "failed to load; going on without it" in log
    assert "this plugin is broken" in log  # with its traceback, in the server's log only


async def test_an_agent_uses_the_plugins_tool_in_the_kernel(users: dict[str, User]) -> None:
    pia = users["pia"]
    nb = v4.new_notebook(
        cells=[v4.new_markdown_cell("You count words with the word_count tool, then answer.")],
        metadata={
            "oraculo": {
                "agent": {
                    "name": "counter",
                    "use_tools": ["word_count", "no_such_tool"],
                    "require_tool": True,
                    "max_steps": 2,
                    "temperature": 0.0,
                }
            }
        },
    )
    r = await pia.api("PUT", f"/user/{pia.name}/api/contents/agents", json={"type": "directory"})
    assert r.status_code in (200, 201), r.text
    r = await pia.api(
        "PUT",
        f"/user/{pia.name}/api/contents/agents/counter.ipynb",
        json={"type": "notebook", "format": "json", "content": dict(nb)},
    )
    assert r.status_code in (200, 201), r.text
    r = await pia.api("GET", f"/user/{pia.name}/api/v1/agents/counter")
    assert r.status_code == 200, r.text
    assert [t["name"] for t in r.json()["tools"]] == ["word_count"]
    assert "Count the words in a text." in r.json()["tools"][0]["description"]

    r = await pia.api(
        "POST",
        f"/user/{pia.name}/api/v1/agents/runs",
        json={"goal": "How many words are in 'the quick brown fox'?", "agents": ["counter"]},
    )
    assert r.status_code == 201, r.text
    events = await _follow(pia, r.json()["id"])
    call = next(e for e in events if e["type"] == "tool_call")
    result = next(e for e in events if e["type"] == "tool_result")
    assert call["tool"] == "word_count" and "def word_count" in call["code"]
    assert result["error"] is None, result
    # it ran in the kernel: the count of the words the model passed
    assert result["content"].strip() == str(len(str(call["arguments"]["text"]).split()))


async def test_the_plugins_panel_is_served(users: dict[str, User]) -> None:
    pia, otto = users["pia"], users["otto"]

    async def page() -> httpx.Response | None:
        r = await pia.api("GET", f"/user/{pia.name}/oraculo-panels/hello_panel", timeout=120)
        return r if r.status_code == 200 else None

    r = await wait_for(page, 180, "the plugin's panel", 1.0)
    assert "Example plugin · Oráculo" in r.text
    r = await otto.api("GET", f"/user/{pia.name}/oraculo-panels/hello_panel")
    assert r.status_code in (302, 403), r.status_code


async def _follow(user: User, run_id: str, timeout: float = 300) -> list[dict[str, Any]]:
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
