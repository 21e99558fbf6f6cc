"""Budgets end to end on the session hub: a user's server reports its kernel's CPU time with its
own credential, and a spent budget refuses new executions through the API and chat, with the
budget and its reset in the error envelope, while a running notebook cell is never cut."""

from __future__ import annotations

import re
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from oraculo.extensions.panels.usage import TEST_ID
from tests.harness import (
    ADMIN_PASSWORD,
    HubClient,
    HubProcess,
    User,
    new_user,
    signed_in_panel,
    wait_for,
)

BURN = "import time\nt = time.process_time()\nwhile time.process_time() - t < {s}: pass\n"


@pytest.fixture(scope="module")
async def people(hub: HubProcess, hub_client: HubClient) -> AsyncIterator[dict[str, User]]:
    admin = HubClient(hub)
    await admin.login("admin", ADMIN_PASSWORD)
    out = {
        "admin": User(name="admin", token=await admin.token("admin"), client=admin),
        "uma": await new_user(hub_client, "uma"),
        "vic": await new_user(hub_client, "vic"),
    }
    await out["uma"].spawn()
    try:
        yield out
    finally:
        for key in ("uma", "vic"):
            await out[key].client.aclose()
        await admin.aclose()


def models(hub: HubProcess) -> str:
    return f"{hub.url}/services/models/"


async def budget(hub: HubProcess, who: User, method: str, expect: int, **b: Any) -> httpx.Response:
    async with httpx.AsyncClient(timeout=30) as c:
        if method == "PUT":
            r = await c.put(models(hub) + "v1/budgets", json=b, headers=who.auth)
        else:
            b.pop("limit", None)
            r = await c.delete(models(hub) + "v1/budgets", params=b, headers=who.auth)
    assert r.status_code == expect, r.text
    return r


async def execute(user: User, code: str, expect: int = 200) -> dict[str, Any]:
    r = await user.api("POST", f"/user/{user.name}/api/v1/execute", json={"code": code}, timeout=60)
    assert r.status_code == expect, r.text
    return dict(r.json())


async def test_kernel_time_counts_and_a_spent_budget_refuses_new_work(
    hub: HubProcess, people: dict[str, User]
) -> None:
    uma, vic, admin = people["uma"], people["vic"], people["admin"]
    assert (await execute(uma, BURN.format(s=1.5)))["status"] == "ok"
    # the next execution first reports what the kernel used (the sampler also runs every 10 s)
    assert (await execute(uma, "1 + 1"))["status"] == "ok"

    async def cpu() -> float | None:
        async with httpx.AsyncClient(timeout=30) as c:
            r = await c.get(models(hub) + "v1/usage/summary", headers=uma.auth)
        assert r.status_code == 200, r.text
        seconds = float(r.json()["totals"]["cpu_seconds"])
        return seconds if seconds >= 1.5 else None

    assert await wait_for(cpu, 30, "uma's kernel CPU seconds") < 30

    b = {"scope": "user", "name": "uma", "period": "day", "unit": "cpu_seconds", "limit": 1}
    await budget(hub, vic, "PUT", 403, **b)  # a user's token may not set budgets
    await budget(hub, admin, "PUT", 200, **b)
    try:
        err = await execute(uma, "1 + 1", expect=429)
        assert set(err) == {"message", "reason", "type"} and err["type"] == "budget_exceeded"
        assert "daily CPU-seconds budget of user uma (1 cpu_seconds)" in err["message"]
        assert "resets at" in err["message"]
        # a notebook's own cell (the kernel websocket) is never refused or cut
        kernel_id = await uma.start_kernel("oraculo")
        out = await uma.execute(kernel_id, BURN.format(s=0.5) + "print('finished')")
        assert out["error"] is None and out["stdout"] == "finished\n"
        # another user is not bound by uma's budget
        await vic.spawn()
        assert (await execute(vic, "2 + 2"))["status"] == "ok"
    finally:
        await budget(hub, admin, "DELETE", 204, **b)
    assert (await execute(uma, "3 + 3"))["status"] == "ok"


async def test_a_spent_token_budget_refuses_chat(hub: HubProcess, people: dict[str, User]) -> None:
    uma, admin = people["uma"], people["admin"]
    b = {"scope": "user", "name": "uma", "period": "month", "unit": "tokens", "limit": 0}
    await budget(hub, admin, "PUT", 200, **b)
    try:
        r = await uma.api(
            "POST",
            "/user/uma/api/v1/chat",
            json={"messages": [{"role": "user", "content": "hi"}], "max_tokens": 4},
            timeout=60,
        )
        assert r.status_code == 429, r.text
        err = r.json()
        assert set(err) == {"message", "reason", "type"}
        assert "monthly token budget of user uma (0 tokens)" in err["message"]
        assert "resets at" in err["message"]
    finally:
        await budget(hub, admin, "DELETE", 204, **b)


@pytest.mark.browser
async def test_usage_panel_charts_real_usage_against_a_budget(
    hub: HubProcess, people: dict[str, User], artifacts: Path
) -> None:
    uma, admin = people["uma"], people["admin"]
    # real usage in every unit: the kernel's CPU, a chat reply, speech; the busy loop (more
    # CPU than any of uma's executions before it, by a margin wider than what a kernel's first
    # execution adds to its own CPU time on a loaded machine) must top the panel's executions
    burn = await execute(uma, "# burn for the usage panel\n" + BURN.format(s=3.5))
    assert burn["status"] == "ok"
    r = await uma.api(
        "POST",
        "/user/uma/api/v1/chat",
        # a stored conversation (as the chat panel makes), so its requests carry its id
        json={
            "messages": [{"role": "user", "content": "Say hello"}],
            "max_tokens": 8,
            "store": True,
        },
        timeout=120,
    )
    assert r.status_code == 200, r.text
    conversation = r.json()["oraculo"]["conversation_id"]
    assert conversation
    async with httpx.AsyncClient(timeout=60) as c:
        r = await c.post(
            models(hub) + "v1/audio/speech",
            json={"model": "tts-1", "input": "Usage is counted.", "voice": "alloy"},
            headers=uma.auth,
        )
    assert r.status_code == 200, r.text
    b = {"scope": "user", "name": "uma", "period": "day", "unit": "tokens", "limit": 100000}
    await budget(hub, admin, "PUT", 200, **b)
    try:
        async with signed_in_panel(uma, "usage", {"width": 1200, "height": 1400}) as p:
            page = p.page
            ready = page.locator(f"[data-testid={TEST_ID}][data-state=ready][data-period=week]")
            await ready.wait_for(state="attached", timeout=60_000)
            totals = page.get_by_test_id("usage-totals")
            for unit in ("tokens", "cpu_seconds", "voice_seconds"):
                text = await totals.locator(f"[data-unit={unit}]").inner_text()
                assert float(text.replace(",", "")) > 0, (unit, text)
            await page.locator(".bk-Canvas, canvas").first.wait_for(timeout=30_000)
            budgets = page.get_by_test_id("usage-budgets")
            assert "Daily Model tokens" in await budgets.inner_text()
            top = await page.get_by_test_id("usage-top").inner_text()
            assert "kernel" in top
            # the chat's requests, counted together as its conversation
            assert "conversation" in top and conversation in top, top
            # the most expensive executions: the busy loop first, with its origin, kernel CPU
            # seconds and the code's first line
            first = page.get_by_test_id("usage-executions").locator("tr[data-execution]").first
            await first.wait_for(timeout=30_000)
            assert await first.get_attribute("data-execution") == burn["execution_id"]
            row = await first.inner_text()
            assert "api" in row and "# burn for the usage panel" in row, row
            assert "(wall)" not in row, row  # the kernel's own CPU time, not its wall time
            await page.get_by_test_id("usage-executions").screenshot(
                path=str(artifacts / "usage-panel-executions.png")
            )
            # a plain user may not read everyone's usage: no link to the operator's dashboard
            assert await page.get_by_test_id("usage-operator-link").count() == 0
            await page.screenshot(path=str(artifacts / "usage-panel.png"), full_page=True)
            # another period, through the selector
            await page.locator(".usage-period button", has_text="This month").click()
            month = f"[data-testid={TEST_ID}][data-state=ready][data-period=month]"
            await page.locator(month).wait_for(state="attached", timeout=30_000)
            await page.screenshot(path=str(artifacts / "usage-panel-month.png"), full_page=True)
            assert p.offsite() == []
            assert not [u for u in p.bad if "/oraculo-panels/" in u or "/api/v1/usage" in u]
    finally:
        await budget(hub, admin, "DELETE", 204, **b)


@pytest.mark.browser
async def test_an_admins_usage_panel_links_to_the_operators_dashboard(
    hub: HubProcess, people: dict[str, User], artifacts: Path
) -> None:
    admin = people["admin"]
    await admin.spawn()
    async with signed_in_panel(
        admin, "usage", {"width": 1200, "height": 1000}, password=ADMIN_PASSWORD
    ) as p:
        page = p.page
        ready = page.locator(f"[data-testid={TEST_ID}][data-state=ready]")
        await ready.wait_for(state="attached", timeout=90_000)
        link = page.get_by_test_id("usage-operator-link")
        await link.wait_for(timeout=30_000)
        # the admin's own usage, not everyone's: the totals are the admin's summary
        await page.screenshot(path=str(artifacts / "usage-panel-admin-link.png"), full_page=True)
        async with page.expect_popup() as opened:
            await link.click()
        dashboard = await opened.value
        await dashboard.get_by_test_id("operator-dashboard").wait_for(timeout=90_000)
        await dashboard.screenshot(path=str(artifacts / "usage-panel-admin-dashboard.png"))
        await dashboard.close()
        # JupyterLab's launcher has an "Operator's dashboard" tile for an admin; it opens the
        # dashboard in a new tab (a plain user has none: tests/e2e/test_browser.py)
        await page.goto(f"{admin.client.hub.url}/user/admin/lab")
        tile = page.locator(
            '.jp-LauncherCard[data-category="Oráculo"][title^="Operator\'s dashboard"]'
        )
        await tile.wait_for(timeout=120_000)
        icons = page.locator("style[data-oraculo=launcher-icons]")
        await icons.wait_for(state="attached", timeout=30_000)
        assert "/server-proxy/icon/oraculo-operator-dashboard" in (await icons.text_content() or "")
        await page.screenshot(path=str(artifacts / "launcher-operator-dashboard-tile.png"))
        async with page.expect_popup() as opened:
            await tile.click()
        dashboard = await opened.value
        board = "[data-testid=operator-dashboard][data-state=ready]"
        await dashboard.locator(board).wait_for(state="attached", timeout=90_000)
        assert dashboard.url.endswith("/services/usage-dashboard/"), dashboard.url
        await dashboard.screenshot(path=str(artifacts / "launcher-operator-dashboard-opened.png"))
        assert p.offsite() == []
    # the panel's API says the same, and names the admin's own usage
    r = await admin.api("GET", "/user/admin/api/v1/usage", params={"period": "day"})
    assert r.status_code == 200, r.text
    assert r.json()["operator_dashboard"] == "/services/usage-dashboard/"
    assert r.json()["summary"].get("users") in (None, [])  # not everyone's, per user
    await admin.client.http.delete("/hub/api/users/admin/server", headers=admin.auth)


async def test_usage_api_is_the_users_own(hub: HubProcess, people: dict[str, User]) -> None:
    uma, vic = people["uma"], people["vic"]
    r = await uma.api("GET", "/user/uma/api/v1/usage", params={"period": "year"})
    assert r.status_code == 400 and set(r.json()) == {"message", "reason", "type"}
    r = await vic.api("GET", "/user/uma/api/v1/usage")
    assert r.status_code in (403, 404), r.text  # another user's token never reaches it
    r = await uma.api("GET", "/user/uma/api/v1/usage", params={"period": "day"})
    assert r.status_code == 200, r.text
    assert r.json()["summary"]["user"] == "uma"


async def test_the_most_expensive_executions_are_the_users_own(
    hub: HubProcess, people: dict[str, User]
) -> None:
    """Real executions through the hub: a busy loop's kernel CPU seconds are measured and it
    tops the list; a cheap one is below it; bad input gets the error shape; another user's token
    is refused."""
    uma, vic = people["uma"], people["vic"]
    cheap = await execute(uma, "x = 1 + 1\nx")
    busy = await execute(uma, "# the busiest loop\n" + BURN.format(s=5.0))
    assert busy["status"] == "ok" and busy["cpu_source"] == "kernel"
    # the kernel's CPU time over the loop (which spins 5.0 s of its own process time), read
    # from the kernel's /proc counters in clock ticks: within a tick or so of that
    assert busy["cpu_seconds"] >= 4.9, busy
    assert cheap["cpu_seconds"] < 1.0, cheap
    path = "/user/uma/api/v1/usage/executions"
    r = await uma.api("GET", path, params={"period": "day", "limit": "50"})
    assert r.status_code == 200, r.text
    rows = r.json()["data"]
    top = rows[0]
    assert top["execution_id"] == busy["execution_id"], rows[:3]
    assert top["origin"] == "api" and top["cpu_source"] == "kernel"
    assert top["code_first_line"] == "# the busiest loop"
    assert top["cpu_seconds"] >= 5.0 and top["duration_seconds"] >= 5.0 * 0.9
    assert top["started_at"] and top["finished_at"] and top["status"] == "ok"
    ids = [e["execution_id"] for e in rows]
    assert cheap["execution_id"] in ids  # ranked below
    assert ids.index(cheap["execution_id"]) > 0
    assert [e["cpu_seconds"] for e in rows] == sorted(
        (e["cpu_seconds"] for e in rows), reverse=True
    )
    # code run from a chat reply ("Run" in the chat panel) names its conversation
    r = await uma.api(
        "POST",
        "/user/uma/api/v1/execute",
        json={"code": "print('from chat')", "origin": "chat", "conversation_id": "conv42"},
        timeout=60,
    )
    assert r.status_code == 200, r.text
    r = await uma.api("GET", path, params={"period": "day", "limit": "100"})
    chat = [e for e in r.json()["data"] if e["origin"] == "chat"]
    assert chat and chat[0]["conversation_id"] == "conv42", chat
    assert chat[0]["code_first_line"] == "print('from chat')"
    r = await uma.api("GET", path, params={"period": "day", "limit": "1"})
    assert [e["execution_id"] for e in r.json()["data"]] == [busy["execution_id"]]
    for bad in ({"period": "year"}, {"limit": "x"}, {"limit": "0"}, {"limit": "101"}):
        r = await uma.api("GET", path, params=bad)
        assert r.status_code == 400 and set(r.json()) == {"message", "reason", "type"}, bad
    # another user's token never reaches uma's list
    r = await vic.api("GET", path)
    assert r.status_code in (403, 404), r.text


async def test_no_user_sees_a_services_link_that_fails(people: dict[str, User]) -> None:
    """Every link of the hub's Services menu opens a page for whoever sees it: the model
    service's root for everyone, the operator's dashboard for admins only."""
    for who, expect in ((people["uma"], {"/services/models/"}), (people["admin"], None)):
        r = await who.client.http.get("/hub/home")
        assert r.status_code == 200, r.text[:300]
        links = set(re.findall(r'class="dropdown-item" href="(/services/[^"]+)"', r.text))
        if expect is not None:
            assert links == expect
        else:
            assert links == {"/services/models/", "/services/usage-dashboard/"}
        for link in links:
            page = await who.client.http.get(link, follow_redirects=True)
            assert page.status_code == 200, (who.name, link, page.text[:300])
            assert "text/html" in page.headers["content-type"]
