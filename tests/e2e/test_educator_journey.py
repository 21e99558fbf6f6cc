"""The educator's journey in Chromium against a real hub (model service loaded), with a
screenshot per step under test-artifacts/educator-*.png.

An instructor's cohort with two students (the hub group, its instructor named in the group's
properties) → the instructor sees the Cohort tile in JupyterLab's launcher, opens the Cohort
panel and releases an nbgrader assignment → a student opens the panel, fetches the assignment
into their home, completes it and submits it → the instructor collects and autogrades it and
sees the score in the Cohort panel, with each student's AI use this week.
"""

from __future__ import annotations

import re
import uuid
from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import pytest
from playwright.async_api import expect

from tests.cohorts import ASSIGNMENT, Cohort, complete, new_cohort, write_source
from tests.harness import CHROMIUM_ARGS, PASSWORD, HubClient, HubProcess, signed_in_panel, wait_for

pytestmark = pytest.mark.browser

VIEW = {"width": 1200, "height": 900}


@pytest.fixture(scope="module")
async def cohort(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[Cohort]:
    hub = await HubProcess(tmp_path_factory.mktemp("hub-educator"), models=True).start()
    signup = HubClient(hub)
    made: Cohort | None = None
    try:

        async def models_loaded() -> bool:
            async with httpx.AsyncClient(timeout=5) as c:
                r = await c.get(f"{hub.url}/services/models/health")
                return r.status_code == 200 and r.json().get("status") == "ok"

        await wait_for(models_loaded, 180, "the hub's model service to load", 0.25)
        tag = uuid.uuid4().hex[:5]
        made = await new_cohort(hub, f"bio{tag}", tag, signup)
        yield made
    finally:
        if made is not None:
            await made.aclose()
        await signup.aclose()
        hub.stop()


async def test_release_submit_autograde_in_the_cohort_panel(
    cohort: Cohort, artifacts: Path
) -> None:
    teacher, (ana, ben) = cohort.instructor, cohort.students
    group = cohort.group
    shot = 0

    async def snap(page: object, what: str) -> None:
        nonlocal shot
        shot += 1
        await page.screenshot(path=str(artifacts / f"educator-{shot:02d}-{what}.png"))  # type: ignore[attr-defined]

    # The instructor's notebook of the assignment, with nbgrader's cell metadata, in their
    # course folder (written as JupyterLab saves it, through the contents API).
    await write_source(teacher, group)
    # A little AI use for the usage table: one chat answer for ana, through her server.
    r = await ana.api(
        "POST",
        f"/user/{ana.name}/api/v1/chat",
        json={"messages": [{"role": "user", "content": "Say hi."}], "max_tokens": 8},
        timeout=120,
    )
    assert r.status_code == 200, r.text

    # 1. the instructor's launcher has the Cohort tile; a student's has none
    from playwright.async_api import async_playwright

    async with async_playwright() as pw:
        browser = await pw.chromium.launch(executable_path="/usr/bin/chromium", args=CHROMIUM_ARGS)
        try:
            for who, has_tile in ((teacher, True), (ben, False)):
                page = await browser.new_page(viewport=VIEW)
                await page.goto(f"{cohort.hub.url}/hub/login?next=/user/{who.name}/lab")
                await page.fill("#username_input", who.name)
                await page.fill("#password_input", PASSWORD)
                await page.click("#login_submit")
                await page.wait_for_url(re.compile(rf"/user/{who.name}/lab"), timeout=120_000)
                await page.locator('.jp-LauncherCard[title="Workspace"]').wait_for(timeout=90_000)
                tile = page.locator('.jp-LauncherCard[title="Cohort"]')
                if has_tile:
                    await expect(tile).to_be_visible(timeout=10_000)
                    await snap(page, "instructor-launcher-cohort-tile")
                else:
                    await expect(tile).to_have_count(0)
                await page.close()
        finally:
            await browser.close()

    # 2. the instructor releases the assignment from the Cohort panel
    async with signed_in_panel(teacher, "cohort", VIEW) as panel:
        page = panel.page
        root = page.get_by_test_id("oraculo-cohort")
        await expect(root).to_have_attribute("data-state", "ready", timeout=120_000)
        await expect(root).to_have_attribute("data-cohort", group)
        await page.locator(".cohort-assignment input").fill(ASSIGNMENT)
        await page.locator(".cohort-release button").click()
        await expect(page.get_by_test_id("cohort-message")).to_have_attribute(
            "data-ok", "true", timeout=120_000
        )
        row = page.locator(f'[data-testid=cohort-assignments] tr[data-assignment="{ASSIGNMENT}"]')
        await expect(row).to_contain_text("released")
        await snap(page, "instructor-released")
        assert not panel.offsite(), panel.offsite()

    # 3. ana fetches it into her home, completes it and submits it
    async with signed_in_panel(ana, "cohort", VIEW) as panel:
        page = panel.page
        root = page.get_by_test_id("oraculo-cohort")
        await expect(root).to_have_attribute("data-state", "ready", timeout=120_000)
        row = page.locator(f'[data-testid=cohort-assignments] tr[data-assignment="{ASSIGNMENT}"]')
        await expect(row).to_contain_text("released")
        await page.locator(".cohort-fetch button").click()
        await expect(row).to_contain_text("fetched", timeout=120_000)
        await snap(page, "student-fetched")
        await complete(ana, group)
        await page.locator(".cohort-submit button").click()
        await expect(row).to_contain_text("submitted", timeout=120_000)
        await snap(page, "student-submitted")
        # a student's panel offers no instructor step
        await expect(page.locator(".cohort-collect")).to_have_count(0)

    # 4. the instructor collects and autogrades; the score is in the panel
    async with signed_in_panel(teacher, "cohort", VIEW) as panel:
        page = panel.page
        root = page.get_by_test_id("oraculo-cohort")
        await expect(root).to_have_attribute("data-state", "ready", timeout=120_000)
        await page.locator(".cohort-assignment input").fill(ASSIGNMENT)
        await page.locator(".cohort-collect button").click()
        score = page.locator(f'[data-testid=cohort-scores] tr[data-student="{ana.name}"]')
        await expect(score).to_have_attribute("data-score", "2", timeout=300_000)
        await expect(score).to_contain_text("2 / 2")
        usage = page.get_by_test_id("cohort-usage")
        await expect(usage).to_be_visible()
        await snap(page, "instructor-scores")
        assert not panel.offsite(), panel.offsite()
