"""A class arriving at once, in Chromium against a real hub: servers start a few at a time and a
student who arrives while others start sees their place in the queue on the spawn page, then
lands in JupyterLab. Screenshots under test-artifacts/start-queue-*.png.

The hub starts one server at a time here (``ORACULO_CONCURRENT_STARTS=1``) so that the queue is
there for certain on any machine; the default is twice the CPU count.
"""

from __future__ import annotations

import asyncio
import re
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from playwright.async_api import async_playwright, expect

from tests.harness import CHROMIUM_ARGS, PASSWORD, HubClient, HubProcess, User, new_user

pytestmark = [pytest.mark.browser, pytest.mark.timeout(600)]


@pytest.fixture(scope="module")
async def hub(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[HubProcess]:
    data = tmp_path_factory.mktemp("hub-queue")
    proc = await HubProcess(data, env={"ORACULO_CONCURRENT_STARTS": "1"}).start()
    try:
        yield proc
    finally:
        proc.stop()


async def test_a_student_arriving_while_others_start_sees_their_place_then_the_lab(
    hub: HubProcess, artifacts: Path
) -> None:
    client = HubClient(hub)
    try:
        early = [await new_user(client, f"early{i}") for i in range(3)]
        late = await new_user(client, "late")
        # Three classmates click Start a moment before (a spawn's POST answers once the server
        # is up or after 10 s, so they are sent side by side, not one after another).
        starts = [
            asyncio.create_task(user.api("POST", f"/hub/api/users/{user.name}/server"))
            for user in early
        ]
        await asyncio.sleep(0.5)

        async with async_playwright() as pw:
            browser = await pw.chromium.launch(
                executable_path="/usr/bin/chromium", args=CHROMIUM_ARGS
            )
            try:
                page = await browser.new_page(viewport={"width": 1200, "height": 800})
                await page.goto(f"{hub.url}/hub/login?next=/hub/spawn")
                await page.fill("#username_input", late.name)
                await page.fill("#password_input", PASSWORD)
                await page.screenshot(path=str(artifacts / "start-queue-1-sign-in.png"))
                await page.click("#login_submit")
                # The spawn page: the progress log names the place in the queue.
                place = page.get_by_text(re.compile(r"Waiting for a turn to start: place \d"))
                await expect(place.first).to_be_visible(timeout=60_000)
                await page.screenshot(path=str(artifacts / "start-queue-2-waiting.png"))
                await page.wait_for_url(re.compile(rf"/user/{late.name}/lab"), timeout=240_000)
                launcher = page.locator('.jp-LauncherCard[title="Workspace"]')
                await launcher.wait_for(timeout=120_000)
                await page.screenshot(path=str(artifacts / "start-queue-3-lab.png"))
            finally:
                await browser.close()

        # Nobody's start was lost: every classmate's server came up too.
        for r in await asyncio.gather(*starts):
            assert r.status_code in (201, 202), r.text
        for user in early:
            await user.wait_ready(240)
        await _all_answer([*early, late])
    finally:
        await client.aclose()


async def _all_answer(users: list[User]) -> None:
    for user in users:
        r = await user.api("GET", f"/user/{user.name}/api/status")
        assert r.status_code == 200, (user.name, r.status_code)
