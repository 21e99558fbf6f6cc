"""The educator's sign-up journey in Chromium against the real hub (no open sign-up): a student
asks to join a cohort, is refused until approved, the cohort's instructor (not an admin)
approves on the hub's cohorts page, and the student signs in; another student signs up with
the invitation link and is in at once. A screenshot per step in test-artifacts/.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from tests.harness import ADMIN_PASSWORD, CHROMIUM_ARGS, PASSWORD, HubClient, HubProcess, User

pytestmark = [pytest.mark.browser, pytest.mark.timeout(600)]


@pytest.fixture
async def course(tmp_path: Path) -> AsyncIterator[dict[str, Any]]:
    hub = await HubProcess(tmp_path / "hub", env={"ORACULO_OPEN_SIGNUP": "0"}).start()
    admin_client, ivy_client = HubClient(hub), HubClient(hub)
    try:
        await admin_client.login("admin", ADMIN_PASSWORD)
        admin = User("admin", await admin_client.token("admin"), admin_client)
        # the instructor's own account, approved by the hub's admin
        await ivy_client._form(
            "/hub/signup",
            {
                "username": "ivy",
                "signup_password": PASSWORD,
                "signup_password_confirmation": PASSWORD,
            },
        )
        assert (await admin_client.http.get("/hub/authorize/ivy")).status_code == 302
        await ivy_client.login("ivy", PASSWORD)  # her hub account exists from her first sign-in
        r = await admin.api(
            "POST", "/hub/api/cohorts", json={"name": "bio-1", "instructors": ["ivy"]}
        )
        assert r.status_code == 201, r.text
        yield {"hub": hub, "invite_url": r.json()["invite_url"]}
    finally:
        await ivy_client.aclose()
        await admin_client.aclose()
        hub.stop()


async def sign_in(page: Any, hub: HubProcess, name: str) -> None:
    await page.goto(f"{hub.url}/hub/login")
    await page.fill("#username_input", name)
    await page.fill("#password_input", PASSWORD)
    await page.click("#login_submit")


async def test_sign_up_approved_by_the_instructor_and_by_invitation(
    course: dict[str, Any], artifacts: Path
) -> None:
    from playwright.async_api import async_playwright, expect

    hub = course["hub"]
    shots = artifacts / "educator-signup"
    shots.mkdir(exist_ok=True)
    async with async_playwright() as pw:
        browser = await pw.chromium.launch(executable_path="/usr/bin/chromium", args=CHROMIUM_ARGS)
        try:
            student = await (await browser.new_context()).new_page()
            # 1. the student asks to join bio-1
            await student.goto(f"{hub.url}/hub/signup?cohort=bio-1")
            await expect(student.locator("#cohort_input")).to_have_value("bio-1")
            await student.fill("#username_input", "stu")
            await student.fill("#password_input", PASSWORD)
            await student.fill("#password_confirmation_input", PASSWORD)
            await student.click("#signup_submit")
            await expect(student.locator(".alert")).to_contain_text(
                "waits for approval by an instructor of cohort bio-1"
            )
            await student.screenshot(path=str(shots / "1-signed-up.png"), full_page=True)

            # 2. refused before approval
            await sign_in(student, hub, "stu")
            await expect(student.locator("body")).to_contain_text("has not been authorized")
            await student.screenshot(path=str(shots / "2-refused.png"), full_page=True)

            # 3. the instructor approves on the hub's cohorts page
            teacher = await (await browser.new_context()).new_page()
            await sign_in(teacher, hub, "ivy")
            await teacher.wait_for_url("**/user/ivy/**", timeout=120_000)
            await teacher.goto(f"{hub.url}/hub/cohorts")
            row = teacher.locator("#cohort-bio-1 ul.pending li[data-user=stu]")
            await expect(row).to_be_visible()
            await teacher.screenshot(path=str(shots / "3-pending.png"), full_page=True)
            await row.locator("button.approve").click()
            await expect(teacher.locator("#cohort-message")).to_contain_text("Approved stu")
            await expect(teacher.locator("#cohort-bio-1 tr[data-user=stu]")).to_be_visible()
            await teacher.screenshot(path=str(shots / "4-approved.png"), full_page=True)

            # 4. the student signs in, into their workspace; they manage no cohort
            await sign_in(student, hub, "stu")
            await student.wait_for_url("**/user/stu/**", timeout=120_000)
            await student.screenshot(path=str(shots / "5-signed-in.png"))
            await student.goto(f"{hub.url}/hub/cohorts")
            await expect(student.locator("#no-cohorts")).to_be_visible()

            # 5. with the invitation link: in at once
            invited = await (await browser.new_context()).new_page()
            await invited.goto(hub.url + course["invite_url"])
            await expect(invited.locator("#invite_input")).not_to_have_value("")
            await invited.fill("#username_input", "kim")
            await invited.fill("#password_input", PASSWORD)
            await invited.fill("#password_confirmation_input", PASSWORD)
            await invited.click("#signup_submit")
            await expect(invited.locator(".alert")).to_contain_text("You are in cohort bio-1")
            await invited.screenshot(path=str(shots / "6-invited.png"), full_page=True)
            await sign_in(invited, hub, "kim")
            await invited.wait_for_url("**/user/kim/**", timeout=120_000)
            await teacher.goto(f"{hub.url}/hub/cohorts")
            await expect(teacher.locator("#cohort-bio-1 tr[data-user=kim]")).to_be_visible()
            await teacher.screenshot(path=str(shots / "7-members.png"), full_page=True)
        finally:
            await browser.close()
