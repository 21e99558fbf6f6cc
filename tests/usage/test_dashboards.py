"""The operator's dashboard (a hub service) and the model service's root page, on the session hub
with real usage the tests make (a kernel's CPU, a chat conversation, speech), in Chromium as an
admin and as a user; and the dashboard refused, from the attacker's side, to a user's token, a
user's browser session and an admin token without the usage read-all scope."""

from __future__ import annotations

import contextlib
import re
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from oraculo.models.usage import CHART_USERS
from tests.harness import (
    ADMIN_PASSWORD,
    CHROMIUM_ARGS,
    PASSWORD,
    HubClient,
    HubProcess,
    User,
    new_user,
    wait_for,
)

DASHBOARD = "/services/usage-dashboard/"
MODELS = "/services/models/"
GROUP = "dash-cohort"
BURN = "import time\nt = time.process_time()\nwhile time.process_time() - t < 1.0: pass\n"


@pytest.fixture(scope="module")
async def people(hub: HubProcess, hub_client: HubClient) -> AsyncIterator[dict[str, User]]:
    admin = HubClient(hub)
    await admin.login("admin", ADMIN_PASSWORD)
    out = {
        "admin": User(name="admin", token=await admin.token("admin"), client=admin),
        "opal": await new_user(hub_client, "opal"),
    }
    try:
        yield out
    finally:
        await out["opal"].client.aclose()
        await admin.aclose()


async def models_api(
    hub: HubProcess, who: User, method: str, path: str, expect: int, **kw: Any
) -> httpx.Response:
    async with httpx.AsyncClient(base_url=hub.url + MODELS, timeout=120) as c:
        r = await c.request(method, path, headers=who.auth, **kw)
    assert r.status_code == expect, r.text
    return r


@pytest.fixture(scope="module")
async def usage(hub: HubProcess, people: dict[str, User]) -> dict[str, Any]:
    """Real usage by opal in every unit, a budget she is near, and a refused request."""
    opal, admin = people["opal"], people["admin"]
    # a group of her own, so her rows carry it (and the dashboard shows it)
    r = await admin.client.http.post(
        f"/hub/api/groups/{GROUP}", json={"users": ["opal"]}, headers=admin.auth
    )
    assert r.status_code in (201, 409), r.text
    await opal.spawn()
    r = await opal.api(
        "POST", "/user/opal/api/v1/execute", json={"code": BURN + "print('burnt')"}, timeout=60
    )
    assert r.status_code == 200 and "burnt" in r.json()["stdout"], r.text
    r = await opal.api("POST", "/user/opal/api/v1/execute", json={"code": "1+1"}, timeout=60)
    assert r.status_code == 200, r.text  # reports the burn (the sampler also runs every 10 s)
    r = await opal.api(
        "POST",
        "/user/opal/api/v1/chat",
        json={
            "messages": [{"role": "user", "content": "Say hello"}],
            "max_tokens": 8,
            "temperature": 0,
            "store": True,
        },
        timeout=120,
    )
    assert r.status_code == 200, r.text
    conversation = r.json()["oraculo"]["conversation_id"]
    assert conversation
    speech = {"model": "tts-1", "input": "Usage is counted.", "voice": "alloy"}
    await models_api(hub, opal, "POST", "v1/audio/speech", 200, json=speech)

    async def summary() -> dict[str, Any] | None:
        r = await models_api(hub, opal, "GET", "v1/usage/summary", 200, params={"period": "day"})
        t = r.json()["totals"]
        ok = t["tokens"] > 0 and t["cpu_seconds"] >= 1.0 and t["voice_seconds"] > 0
        return dict(t) if ok else None

    totals = await wait_for(summary, 60, "opal's usage in all three units")
    # a voice budget of 0 refuses her next speech (a refusal for the dashboard to count)
    voice = {"scope": "user", "name": "opal", "period": "day", "unit": "voice_seconds", "limit": 0}
    await models_api(hub, admin, "PUT", "v1/budgets", 200, json=voice)
    r = await models_api(hub, opal, "POST", "v1/audio/speech", 429, json=speech)
    assert r.json()["error"]["code"] == "budget_exceeded"
    assert "daily voice-seconds budget of user opal" in r.json()["error"]["message"]
    key = {k: v for k, v in voice.items() if k != "limit"}
    await models_api(hub, admin, "DELETE", "v1/budgets", 204, params=key)
    # a token budget she has spent 90 % of: "near"
    near = {
        "scope": "user",
        "name": "opal",
        "period": "day",
        "unit": "tokens",
        "limit": int(totals["tokens"] / 0.9),
    }
    await models_api(hub, admin, "PUT", "v1/budgets", 200, json=near)
    return {"totals": totals, "conversation": conversation, "near": near}


@contextlib.asynccontextmanager
async def browser_page(hub: HubProcess, name: str, password: str, next_url: str) -> Any:
    """Chromium signed in through the hub's login form as ``name``, sent on to ``next_url``."""
    from playwright.async_api import async_playwright

    async with async_playwright() as pw:
        browser = await pw.chromium.launch(executable_path="/usr/bin/chromium", args=CHROMIUM_ARGS)
        try:
            page = await browser.new_page(viewport={"width": 1400, "height": 1000})
            seen: list[str] = []
            page.on("request", lambda r: seen.append(r.url))
            await page.goto(f"{hub.url}/hub/login?next={next_url}")
            await page.fill("#username_input", name)
            await page.fill("#password_input", password)
            await page.click("#login_submit")
            yield page, seen
        finally:
            await browser.close()


def offsite(seen: list[str]) -> list[str]:
    return [u for u in seen if not u.startswith(("http://127.0.0.1:", "data:", "blob:"))]


def ready(page: Any, period: str | None = None) -> Any:
    """The board once its data is drawn (for ``period``, if given)."""
    sel = "[data-testid=operator-dashboard][data-state=ready]"
    return page.locator(sel + (f"[data-period={period}]" if period else ""))


@pytest.mark.browser
async def test_operator_dashboard_shows_real_usage_and_acts(
    hub: HubProcess, people: dict[str, User], usage: dict[str, Any], artifacts: Path
) -> None:
    from playwright.async_api import expect

    opal = people["opal"]
    async with browser_page(hub, "admin", ADMIN_PASSWORD, DASHBOARD) as (page, seen):
        await ready(page, "week").wait_for(state="attached", timeout=90_000)
        await page.locator(".bk-Canvas, canvas").first.wait_for(timeout=30_000)
        await page.screenshot(path=str(artifacts / "dashboard-1-operator.png"), full_page=True)
        spenders = page.get_by_test_id("top-spenders")
        row = spenders.locator("tr", has_text="opal")
        assert float((await row.locator("[data-col=tokens]").inner_text()).replace(",", "")) > 0
        cpu = await row.locator("[data-col=cpu_seconds]").inner_text()
        assert float(cpu.replace(",", "")) >= 1.0
        voice = await row.locator("[data-col=voice_seconds]").inner_text()
        assert float(voice.replace(",", "")) > 0
        # a running server, with the kernel that burnt CPU
        server = page.get_by_test_id("servers").locator("tr", has_text="opal")
        assert await server.locator("[data-col=state]").inner_text() == "ready"
        assert "CPU" in await server.locator("[data-col=gpu]").inner_text()  # no GPU here
        # every kernel the server runs (as it reports them), with its last CPU report
        kernel = server.locator("[data-col=kernels] [data-kernel]").first
        assert re.search(r"\(running; [\d.]+ CPU s, last report", await kernel.inner_text())
        # budgets and who is near them; the refused speech
        budget = page.get_by_test_id("budgets").locator("tr", has_text="opal")
        assert "near" in await budget.locator("[data-col=state]").inner_text()
        refusals = await page.get_by_test_id("refusals").inner_text()
        assert "opal" in refusals and "budget_exceeded" in refusals
        # the model service's own metrics: the chat model with tokens since start
        assert "smollm2" in await page.get_by_test_id("model-service").inner_text()
        # Bokeh charts (a canvas each), with their series (no prices here: cost 0)
        assert await page.locator(".bk-Canvas, canvas").count() >= 4
        for chart in ("chart-tokens", "chart-cpu", "chart-voice"):
            assert await page.get_by_test_id(chart).locator("[data-key]").count() > 0, chart
        # the chart names the users of most CPU (the rest summed as "(others)"): in a session
        # hub other tests' users may have burnt more than opal, so the table says who
        cpu_by_user = {}
        for tr in await spenders.locator("tr:has(td[data-col=user])").all():
            cell = await tr.locator("[data-col=cpu_seconds]").inner_text()
            user = await tr.locator("[data-col=user]").inner_text()
            cpu_by_user[user] = float(cell.replace(",", "") or 0)
        ranked = sorted(cpu_by_user.values(), reverse=True)
        cut = ranked[CHART_USERS] if len(ranked) > CHART_USERS else 0.0
        chart_cpu = await page.get_by_test_id("chart-cpu").inner_text()
        named = [u for u, cpu in cpu_by_user.items() if cpu > cut + 0.1]
        assert named and all(u in chart_cpu for u in named), (named, chart_cpu)
        group = page.get_by_test_id("groups").locator("tr", has_text=GROUP)
        assert await group.locator("[data-col=members]").inner_text() == "1"
        assert float((await group.locator("[data-col=tokens]").inner_text()).replace(",", "")) > 0
        assert GROUP in await page.get_by_test_id("chart-voice").inner_text()
        # every hub user is listed, spenders first, with their groups
        assert await row.locator("[data-col=groups]").inner_text() == GROUP
        name_cell = page.locator("td[data-col=user]", has_text=re.compile(r"^admin$"))
        admin_row = spenders.locator("tr", has=name_cell)
        assert await admin_row.locator("[data-col=admin]").inner_text() == "yes"

        # change a budget: opal's tokens today capped at 1, so she is over it at once
        await page.locator(".budget-scope select").select_option("user")
        await page.locator(".budget-name input").fill("opal")
        await page.locator(".budget-period select").select_option("day")
        await page.locator(".budget-unit select").select_option("tokens")
        await page.locator(".budget-limit input").fill("1")
        await page.locator(".budget-set button").click()
        flash = page.get_by_test_id("flash")
        await expect(flash).to_contain_text("Budget set", timeout=30_000)
        budget = page.get_by_test_id("budgets").locator("tr", has_text="opal")
        await expect(budget.locator("[data-col=state]")).to_contain_text("spent")
        await page.screenshot(path=str(artifacts / "dashboard-2-budget-set.png"), full_page=True)
        r = await opal.api(
            "POST",
            "/user/opal/api/v1/chat",
            json={"messages": [{"role": "user", "content": "hi"}], "max_tokens": 4},
            timeout=60,
        )
        assert r.status_code == 429 and "daily token budget of user opal" in r.json()["message"]

        # a bad budget is refused with a message, and nothing changes
        await page.locator(".budget-name input").fill("two words")
        await page.locator(".budget-limit input").fill("5")
        await page.locator(".budget-set button").click()
        await expect(flash).to_contain_text("Budget refused", timeout=30_000)
        await expect(budget.locator("[data-col=state]")).to_contain_text("spent")

        # stop opal's server
        await page.locator(".stop-user select").select_option("opal")
        await page.locator(".stop-server button").click()
        await expect(flash).to_contain_text("Stopping opal's server", timeout=30_000)

        async def stopped() -> bool:
            r = await opal.client.http.get("/hub/api/users/opal", headers=opal.auth)
            return r.json()["servers"] == {}

        await wait_for(stopped, 60, "opal's server to stop")
        await page.goto(f"{hub.url}{DASHBOARD}?period=day")
        await ready(page, "day").wait_for(state="attached", timeout=60_000)
        assert "opal" not in await page.get_by_test_id("servers").inner_text()
        await page.screenshot(path=str(artifacts / "dashboard-3-stopped.png"), full_page=True)
        # a crafted link cannot put its own words on the page
        await page.goto(f"{hub.url}{DASHBOARD}?done=Call+0800+now&good=Call+0800+now&bad=x")
        await ready(page).wait_for(state="attached", timeout=60_000)
        assert await page.get_by_test_id("flash").count() == 0
        assert "0800" not in await page.content()
        assert offsite(seen) == []
    key = {k: v for k, v in usage["near"].items() if k != "limit"}
    await models_api(hub, people["admin"], "DELETE", "v1/budgets", 204, params=key)


async def board_socket(hub: HubProcess, token: str, **headers: str) -> int:
    """The status a websocket upgrade to the board's Bokeh server gets (101: it opened)."""
    from tornado.httpclient import HTTPClientError, HTTPRequest
    from tornado.websocket import websocket_connect

    url = hub.url.replace("http", "ws", 1) + DASHBOARD + "ws"
    request = HTTPRequest(url, headers={"Origin": hub.url, **headers}, request_timeout=30)
    try:
        conn = await websocket_connect(request, subprotocols=["bokeh", token])
    except HTTPClientError as e:
        return e.code
    conn.close()
    return 101


def session_token(page: str) -> str:
    """The Bokeh session token a board page carries (signed; it names the page's session)."""
    match = re.search(r'\\?"token\\?":\s*\\?"([A-Za-z0-9_.-]+)', page)
    assert match, page[:2000]
    return match.group(1)


async def test_a_users_token_and_an_unscoped_admin_token_are_refused(
    hub: HubProcess, people: dict[str, User]
) -> None:
    opal, admin = people["opal"], people["admin"]
    async with httpx.AsyncClient(base_url=hub.url, timeout=30) as c:
        r = await c.get(DASHBOARD, headers=opal.auth)
        assert r.status_code == 403
        assert "<title>Operator" not in r.text and "render_items" not in r.text
        # the data behind it, straight from the model service: refused in the error envelope
        r = await c.get(f"{MODELS}v1/usage/daily", headers=opal.auth)
        assert r.status_code == 403 and r.json()["error"]["type"]
        # an admin's token that may reach the service but not read everyone's usage
        narrow = await admin.client.token(
            "admin", scopes=["access:services!service=usage-dashboard"]
        )
        r = await c.get(DASHBOARD, headers={"Authorization": f"token {narrow}"})
        assert r.status_code == 403 and "usage read-all scope" in r.text
        # the admin's full token opens it; the page holds no credential, only Bokeh's session
        r = await c.get(DASHBOARD, headers=admin.auth)
        assert r.status_code == 200 and "<title>Operator&#39;s dashboard" in r.text
        assert admin.token not in r.text and "Cookie" not in r.text
        token = session_token(r.text)
    # the board's websocket (where its actions travel): only the viewer whose page made the
    # session opens it; no login, another user's token, a token without the scope, or a page
    # of another site are refused before the upgrade
    assert await board_socket(hub, token) == 403
    assert await board_socket(hub, token, **opal.auth) == 403
    assert await board_socket(hub, token, Authorization=f"token {narrow}") == 403
    assert await board_socket(hub, token, **admin.auth, Origin="http://evil.example") == 403
    assert await board_socket(hub, "not-a-token", **admin.auth) == 403
    assert await board_socket(hub, token, **admin.auth) == 101


@pytest.mark.browser
async def test_a_users_browser_session_is_refused_and_sees_no_link(
    hub: HubProcess, people: dict[str, User], artifacts: Path
) -> None:
    async with browser_page(hub, "opal", PASSWORD, "/hub/home") as (page, _):
        await page.wait_for_url(re.compile(r"/hub/home"))
        html = await page.content()
        assert "usage-dashboard" not in html and MODELS in html
        response = await page.goto(f"{hub.url}{DASHBOARD}")
        assert response is not None and response.status == 403
        await page.screenshot(path=str(artifacts / "dashboard-4-refused-user.png"))
        assert await page.get_by_test_id("top-spenders").count() == 0


@pytest.mark.browser
async def test_the_model_service_root_is_a_page_for_users_and_operators(
    hub: HubProcess, people: dict[str, User], usage: dict[str, Any], artifacts: Path
) -> None:
    async with browser_page(hub, "opal", PASSWORD, "/hub/home") as (page, _):
        await page.wait_for_url(re.compile(r"/hub/home"))
        await page.get_by_role("button", name="Services").click()
        await page.screenshot(path=str(artifacts / "models-root-0-services-menu.png"))
        await page.locator(f"a.dropdown-item[href='{MODELS}']").click()
        root = page.get_by_test_id("models-root")
        await root.wait_for(timeout=30_000)
        assert "smollm2" in await page.get_by_test_id("models").inner_text()
        tokens = await page.get_by_test_id("my-usage").locator("[data-unit=tokens]").inner_text()
        assert int(tokens.replace(",", "")) >= usage["totals"]["tokens"]
        assert await page.get_by_test_id("operator").count() == 0
        await page.screenshot(path=str(artifacts / "models-root-user.png"), full_page=True)
    async with browser_page(hub, "admin", ADMIN_PASSWORD, "/hub/home") as (page, seen):
        await page.wait_for_url(re.compile(r"/hub/home"))
        html = await page.content()
        assert DASHBOARD in html and MODELS in html  # both links, in the Services menu
        await page.goto(f"{hub.url}{MODELS}")
        await page.get_by_test_id("operator").wait_for(timeout=30_000)
        await page.screenshot(path=str(artifacts / "models-root-operator.png"), full_page=True)
        await page.get_by_test_id("operator").locator("a").click()
        await page.get_by_test_id("operator-dashboard").wait_for(timeout=60_000)
        assert offsite(seen) == []


async def test_an_admin_made_on_the_admin_page_is_an_operator_until_unmade(
    hub: HubProcess, hub_client: HubClient, people: dict[str, User]
) -> None:
    """The hub's admin page makes an admin with PATCH /hub/api/users/<name> {"admin": true}
    (only the flag): they get oraculo-admin with it, and lose it with it."""
    admin = people["admin"]
    jade = await new_user(hub_client, "jade")
    read_all = "custom:oraculo:usage:read-all"
    async with httpx.AsyncClient(base_url=hub.url, timeout=60) as c:

        async def look() -> tuple[set[str], int, int]:
            me = (await c.get("/hub/api/user", headers=jade.auth)).json()
            seen = (await c.get("/hub/api/users/jade", headers=admin.auth)).json()
            token = await jade.client.token("jade")  # fresh: no service has it cached
            fresh = {"Authorization": f"token {token}"}
            page = await c.get(DASHBOARD, headers=fresh)
            daily = await c.get(f"{MODELS}v1/usage/daily", headers=fresh)
            return set(seen["roles"]) | set(me["scopes"]), page.status_code, daily.status_code

        held, page, daily = await look()
        assert read_all not in held and "oraculo-admin" not in held
        assert (page, daily) == (403, 403)
        path = "/hub/api/users/jade"
        r = await c.patch(path, json={"admin": True}, headers=admin.auth)
        assert r.status_code == 200 and r.json()["admin"] is True
        try:
            held, page, daily = await look()
            assert {read_all, "oraculo-admin"} <= held
            assert (page, daily) == (200, 200)
        finally:
            r = await c.patch(path, json={"admin": False}, headers=admin.auth)
            assert r.status_code == 200
        held, page, daily = await look()
        assert read_all not in held and "oraculo-admin" not in held
        assert (page, daily) == (403, 403)
