"""In a real Chromium: sign in on the login page, land in JupyterLab, open the Workspace panel.

Every request the browser makes must go to 127.0.0.1 and succeed: the workspace loads no asset
from a CDN.
"""

from __future__ import annotations

import re
from collections.abc import AsyncIterator
from pathlib import Path
from urllib.parse import urlparse

import pytest
from playwright.async_api import Browser, Request, Response, async_playwright

from oraculo.extensions.panels.proxy import APPS_DIR, TILES
from tests.harness import CHROMIUM_ARGS, PASSWORD, HubClient, HubProcess

pytestmark = pytest.mark.browser


@pytest.fixture(scope="session")
async def browser() -> AsyncIterator[Browser]:
    async with async_playwright() as p:
        b = await p.chromium.launch(executable_path="/usr/bin/chromium", args=CHROMIUM_ARGS)
        yield b
        await b.close()


def local(url: str) -> bool:
    """Loopback, or content the page made itself (data: URLs, blob: URLs of a loopback page)."""
    if url.startswith("data:"):
        return True
    if url.startswith("blob:"):
        url = url[len("blob:") :]
    return urlparse(url).hostname == "127.0.0.1"


async def test_sign_in_lab_and_workspace_panel(
    hub: HubProcess, hub_client: HubClient, browser: Browser, artifacts: Path
) -> None:
    name = "grace"
    signup = HubClient(hub)
    await signup.signup(name)
    await signup.aclose()

    context = await browser.new_context(viewport={"width": 1400, "height": 900})
    seen: list[str] = []
    bad: list[str] = []

    def on_request(request: Request) -> None:
        seen.append(request.url)

    def on_failed(request: Request) -> None:
        # ERR_ABORTED is the page moving on (the spawn-pending page's progress stream when the
        # server is ready), not a request that could not be served.
        if request.failure != "net::ERR_ABORTED":
            bad.append(f"failed {request.url} {request.failure}")

    def on_response(response: Response) -> None:
        if response.status >= 400:
            bad.append(f"{response.status} {response.url}")

    context.on("request", on_request)
    context.on("requestfailed", on_failed)
    context.on("response", on_response)
    page = await context.new_page()
    page.on("websocket", lambda ws: seen.append(ws.url))
    try:
        await page.goto(f"{hub.url}/hub/login")
        await page.fill("#username_input", name)
        await page.fill("#password_input", PASSWORD)
        await page.click("#login_submit")
        await page.wait_for_url(re.compile(rf"/user/{name}/lab"), timeout=120_000)

        tile = page.locator('.jp-LauncherCard[title="Workspace"]')
        await tile.wait_for(timeout=60_000)
        # Only sandboxed kernels: the launcher's notebook and console cards are Oráculo's.
        cards = await page.locator(".jp-LauncherCard").evaluate_all(
            "els => els.map(e => (e.getAttribute('title') || '') + ' ' + e.innerText)"
        )
        assert any("Oráculo (Python 3)" in c for c in cards), cards
        assert not any("ipykernel" in c for c in cards), cards
        await page.screenshot(path=str(artifacts / "e2e-launcher-sandboxed-kernels-only.png"))
        # One tile per panel app, all served by the one panel server.
        for app, title in TILES.items():
            if (APPS_DIR / f"{app}.py").exists():
                await page.locator(f'.jp-LauncherCard[title="{title}"]').wait_for(timeout=5_000)
        # the operator's dashboard's tile is for those who may read everyone's usage only
        assert await page.locator('.jp-LauncherCard[title^="Operator"]').count() == 0
        await tile.click()
        panel = page.frame_locator("iframe").first
        await panel.locator("[data-testid=oraculo-workspace][data-state=ok]").wait_for(
            timeout=90_000
        )
        user = panel.locator("[data-testid=workspace-user-name]")
        assert (await user.inner_text()).strip() == name
        assert "none — CPU" in await panel.locator("[data-testid=workspace-gpu]").inner_text()
        models = panel.locator("[data-testid=workspace-model-service]")
        assert "answering" in await models.inner_text()
        await page.screenshot(path=str(artifacts / "e2e-workspace-panel.png"))
    finally:
        await context.close()

    assert seen, "the browser made no request"
    outside = sorted({u for u in seen if not local(u)})
    assert not outside, f"requests that left 127.0.0.1: {outside}"
    assert not bad, bad
