"""The educator's journey in Chromium against a real hub (model service loaded), with a
screenshot per step under test-artifacts/educator-*.png.

An instructor (approved by the hub's admin, who puts her in the ``instructors`` group) makes a
cohort in the hub's cohorts page, which shows her its invitation link, and invites two
students: one signs up with the invitation link and is in at once, the other asks to join and
is refused until the instructor approves → the cohort's folder is in the students' homes, its
material read-only for them (as root, where the hub runs in system-users mode) → the
instructor starts an exam window in her Cohort panel (where a bad token limit is refused,
saying why): a student's chat is refused with a message naming the cohort while code still
runs → she ends the window in the panel and chat answers again, nothing restarted → the
instructor releases an nbgrader assignment from the Cohort panel (its tile in the
instructor's launcher only); a student fetches it into their home, opens it in JupyterLab,
types the solution, runs the tests, saves it (Ctrl+S) and submits it → the instructor
collects and autogrades it and sees the score in the Cohort panel, next to
the cohort's AI use this week.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest
from playwright.async_api import Browser, Page, async_playwright, expect
from playwright.async_api import TimeoutError as PlaywrightTimeout

from oraculo.hub.groups import group_slug
from tests.cohorts import ASSIGNMENT, SOLUTION, write_source
from tests.e2e.test_journey import Journey
from tests.harness import (
    ADMIN_PASSWORD,
    CHROMIUM_ARGS,
    PASSWORD,
    HubClient,
    HubProcess,
    User,
    signed_in_panel,
    wait_for,
)

pytestmark = [pytest.mark.browser, pytest.mark.timeout(1200)]

VIEW = {"width": 1200, "height": 900}


#: As root (as CI runs) the journey's hub gives each user an OS account (system-users mode), so
#: the course material is read-only for students in fact; otherwise one account for all
#: (process mode), where nothing can be read-only and that step is left out.
AS_ROOT = os.geteuid() == 0


@dataclass
class Course:
    hub: HubProcess
    admin: User
    clients: list[HubClient]
    #: hub users and groups the journey made, whose OS accounts and groups go at the end
    users: list[str] = field(default_factory=list)
    groups: list[str] = field(default_factory=list)


@pytest.fixture(scope="module")
async def course(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[Course]:
    top = Path(f"/tmp/oraculo-educator-{uuid.uuid4().hex[:6]}")  # other accounts traverse /tmp
    env = {"ORACULO_OPEN_SIGNUP": "0"}
    if AS_ROOT:
        env["ORACULO_GROUPS_DIR"] = str(top / "groups")
        env["ORACULO_EXCHANGE_DIR"] = str(top / "exchange")
    hub = HubProcess(
        tmp_path_factory.mktemp("hub-educator"),
        models=True,
        spawner="system-users" if AS_ROOT else "process",
        env=env,
    )
    await hub.start()
    admin_client = HubClient(hub)
    clients = [admin_client]
    made = Course(hub, None, clients)  # type: ignore[arg-type]
    try:

        async def models_loaded() -> bool:
            async with httpx.AsyncClient(timeout=5) as c:
                r = await c.get(f"{hub.url}/services/models/health")
                return r.status_code == 200 and r.json().get("status") == "ok"

        await wait_for(models_loaded, 180, "the hub's model service to load", 0.25)
        await admin_client.login("admin", ADMIN_PASSWORD)
        made.admin = User("admin", await admin_client.token("admin"), admin_client)
        yield made
    finally:
        for c in reversed(clients):
            await c.aclose()
        hub.stop()
        if AS_ROOT:
            for name in made.users:
                subprocess.run(["userdel", "--remove", f"jupyter-{name}"], capture_output=True)
            for g in made.groups:
                subprocess.run(["groupdel", f"oraculo-{group_slug(g)}"], capture_output=True)
            shutil.rmtree(top, ignore_errors=True)


async def sign_up_in_browser(page: Page, url: str, name: str) -> str:
    """Fill the hub's sign-up page at ``url``; the alert's text."""
    await page.goto(url)
    await page.fill("#username_input", name)
    await page.fill("#password_input", PASSWORD)
    await page.fill("#password_confirmation_input", PASSWORD)
    await page.click("#signup_submit")
    alert = page.locator(".alert").first
    await alert.wait_for(timeout=30_000)
    return await alert.inner_text()


async def sign_in(page: Page, hub: HubProcess, name: str, next_path: str) -> None:
    await page.goto(f"{hub.url}/hub/login?next={next_path}")
    await page.fill("#username_input", name)
    await page.fill("#password_input", PASSWORD)
    await page.click("#login_submit")


async def signed_in_user(hub: HubProcess, name: str, clients: list[HubClient]) -> User:
    client = HubClient(hub)
    clients.append(client)
    await client.login(name)
    return User(name, await client.token(name), client)


async def run_code(user: User, code: str) -> dict[str, Any]:
    """``code`` in a new kernel of ``user``'s (as their OS account in system-users mode)."""
    kernel = await user.start_kernel()
    out: dict[str, Any] = await user.execute(kernel, code)
    return out


async def server_chat(user: User) -> httpx.Response:
    return await user.api(
        "POST",
        f"/user/{user.name}/api/v1/chat",
        json={"messages": [{"role": "user", "content": "Say hi."}], "max_tokens": 4},
        timeout=120,
    )


async def close_dialog(page: Page, artifacts: Path) -> None:
    """A JupyterLab dialog over the notebook (one covered the cells once on a loaded machine,
    its text not kept): its screenshot and text go to test-artifacts, then it is dismissed.
    What the journey checks next (the cells run in the Oráculo kernel, the saved file, the
    score) still has to hold."""
    dialog = page.locator(".jp-Dialog")
    try:
        await dialog.first.wait_for(timeout=3_000)
    except PlaywrightTimeout:
        return
    text = await dialog.first.inner_text()
    await page.screenshot(path=str(artifacts / "educator-lab-dialog.png"))
    (artifacts / "educator-lab-dialog.txt").write_text(text)
    reject = dialog.locator(".jp-Dialog-button.jp-mod-reject")
    if await reject.count():
        await reject.first.click()
    else:
        await page.keyboard.press("Escape")
    await expect(dialog).to_have_count(0, timeout=10_000)


async def complete_in_lab(
    page: Page, hub: HubProcess, student: User, group: str, artifacts: Path
) -> None:
    """Open the fetched assignment in JupyterLab, type the solution into its solution cell, run
    it and the graded test cell (no error), and save with Ctrl+S; the saved file holds it."""
    path = f"assignments/{group_slug(group)}/{ASSIGNMENT}/{ASSIGNMENT}.ipynb"
    await page.goto(f"{hub.url}/user/{student.name}/lab/tree/{path}")
    j = Journey(page, artifacts)
    await expect(j.cells()).to_have_count(3, timeout=120_000)
    await j.idle()
    assert "raise NotImplementedError" in await j.source(1)
    await close_dialog(page, artifacts)
    try:
        await j.run_in_cell(1, SOLUTION)
    except PlaywrightTimeout:  # a dialog came up over the cells after all: once more
        await close_dialog(page, artifacts)
        await j.idle()
        await j.run_in_cell(1, SOLUTION)
    await j.executed(1)
    await j.select(2)
    await page.keyboard.press("ControlOrMeta+Enter")  # run it, add no cell below
    out = await j.executed(2)
    assert "Error" not in out, out
    kernel = page.locator(".jp-NotebookPanel:visible .jp-KernelName")
    await expect(kernel).to_contain_text("Oráculo")
    await page.keyboard.press("ControlOrMeta+s")

    async def saved() -> bool:
        r = await student.api("GET", f"/user/{student.name}/api/contents/{path}")
        cells = r.json()["content"]["cells"] if r.status_code == 200 else []
        return any("return 2 * x" in "".join(c["source"]) for c in cells)

    await wait_for(saved, 60, "the notebook to be saved", 0.5)


async def test_the_educators_journey(course: Course, artifacts: Path) -> None:
    hub, admin = course.hub, course.admin
    tag = uuid.uuid4().hex[:5]
    group = f"bio{tag}"
    shot = 0

    async def snap(page: Page, what: str) -> None:
        nonlocal shot
        shot += 1
        await page.screenshot(path=str(artifacts / f"educator-{shot:02d}-{what}.png"))

    async with async_playwright() as pw:
        browser: Browser = await pw.chromium.launch(
            executable_path="/usr/bin/chromium", args=CHROMIUM_ARGS
        )
        try:
            # 1. the instructor signs up; the hub's admin approves her; her cohort is made
            page = await browser.new_page(viewport=VIEW)
            ivy_name = f"ivy{tag}"
            course.users += [ivy_name, f"ana{tag}", f"ben{tag}"]
            course.groups += [group, f"{group}/instructors", "instructors"]
            said = await sign_up_in_browser(page, f"{hub.url}/hub/signup", ivy_name)
            assert "admin" in said, said
            r = await admin.client.http.get(f"/hub/authorize/{ivy_name}")
            assert r.status_code == 302, r.status_code
            ivy = await signed_in_user(hub, ivy_name, course.clients)
            # the admin makes her an instructor (the operator's instructors group); she then
            # makes the cohort herself, in the hub's cohorts page, and is its instructor
            r = await admin.api(
                "POST", "/hub/api/groups/instructors/users", json={"users": [ivy_name]}
            )
            assert r.status_code == 200, r.text
            await sign_in(page, hub, ivy_name, "/hub/cohorts")
            await page.wait_for_url(re.compile(r"/hub/cohorts"), timeout=60_000)
            await page.fill("#cohort_name_input", group)
            await snap(page, "instructor-new-cohort-form")
            await page.click("#cohort_create_submit")
            card = page.locator(f"#cohort-{group}")
            await expect(card.locator(".created")).to_be_visible(timeout=30_000)
            link = card.locator(f"#invite-{group}")
            invite_url = str(await link.input_value())
            assert invite_url.startswith(f"{hub.url}/hub/signup?invite="), invite_url
            await link.focus()  # selected, ready to copy
            await snap(page, "instructor-cohort-created-invitation-link")
            r = await ivy.api("GET", f"/hub/api/cohorts/{group}")
            assert r.status_code == 200 and r.json()["instructors"] == [ivy_name], r.text
            assert invite_url.endswith(f"?invite={r.json()['invite_code']}"), invite_url
            await page.close()

            # 2. ana joins with the invitation link; ben asks to join and waits for approval
            page = await browser.new_page(viewport=VIEW)
            ana_name, ben_name = f"ana{tag}", f"ben{tag}"
            said = await sign_up_in_browser(page, invite_url, ana_name)
            await snap(page, "student-joined-by-invitation")
            said = await sign_up_in_browser(page, f"{hub.url}/hub/signup?cohort={group}", ben_name)
            assert f"instructor of cohort {group}" in said, said
            await snap(page, "student-waits-for-approval")
            await sign_in(page, hub, ben_name, f"/user/{ben_name}/lab")
            await expect(page.get_by_text("has not been authorized")).to_be_visible()
            await snap(page, "student-refused-before-approval")
            r = await ivy.api("GET", f"/hub/api/cohorts/{group}/signups")
            assert r.json()["pending"] == [ben_name], r.text
            r = await ivy.api("POST", f"/hub/api/cohorts/{group}/signups/{ben_name}")
            assert r.status_code == 200, r.text
            r = await ivy.api("GET", f"/hub/api/cohorts/{group}")
            assert sorted(m["name"] for m in r.json()["members"]) == [ana_name, ben_name]
            ana = await signed_in_user(hub, ana_name, course.clients)
            ben = await signed_in_user(hub, ben_name, course.clients)
            for person in (ivy, ana, ben):
                await person.spawn(timeout=180)
            await sign_in(page, hub, ben_name, f"/user/{ben_name}/lab")
            # (through the hub's spawn page, whose URL names the lab only in ?next=)
            lab = re.compile(rf"^{re.escape(hub.url)}/user/{ben_name}/lab")
            await page.wait_for_url(lab, timeout=180_000)
            await page.locator('.jp-LauncherCard[title="Workspace"]').wait_for(timeout=180_000)
            # a student's launcher has no Cohort tile
            await expect(page.locator('.jp-LauncherCard[title="Cohort"]')).to_have_count(0)
            await snap(page, "student-approved-signed-in")
            await page.close()

            # a cohort joined while the server runs: the AI policy and the hub's lists follow
            # at once; in system-users mode the running server keeps the OS groups it started
            # with, and the student's own Cohort panel says to restart it (step 8)
            late = f"{group}b"
            course.groups.append(late)
            r = await ivy.api("POST", "/hub/api/cohorts", json={"name": late})
            assert r.status_code == 201, r.text
            r = await ana.api(
                "POST", "/hub/api/cohorts/join", json={"code": r.json()["invite_code"]}
            )
            assert r.status_code == 200, r.text
            expected = "restart_needed" if AS_ROOT else "applied"
            assert r.json()["live"]["state"] == expected, r.text

            async def learned() -> dict[str, Any] | None:
                r = await ana.api("GET", f"/user/{ana.name}/api/v1/courses")
                return r.json() if late in r.json()["cohorts"] else None

            known = await wait_for(learned, 30, "ana's server to learn the cohort she joined", 0.5)
            assert known["restart_needed"] == ([late] if AS_ROOT else []), known

            # 3. the cohort's folder is in the students' homes; its material, which the
            # instructor writes, is read-only for them (as their own OS accounts, as root)
            for person in (ana, ben):
                r = await person.api("GET", f"/user/{person.name}/api/contents/shared")
                assert group in [c["name"] for c in r.json()["content"]], r.text
            if AS_ROOT:
                week1 = f"(pathlib.Path.home() / 'shared' / {group!r} / 'material' / 'week1.md')"
                out = await run_code(ivy, f"import pathlib\n{week1}.write_text('Week 1: cells')")
                assert out["error"] is None, out
                out = await run_code(ben, f"import pathlib\nprint({week1}.read_text())")
                assert out["stdout"] == "Week 1: cells\n", out
                for code in (
                    f"import pathlib\n{week1}.write_text('mine now')",
                    f"import pathlib\n{week1}.with_name('answers.md').write_text('x')",
                ):
                    out = await run_code(ben, code)
                    assert out["error"] and out["error"]["name"] == "PermissionError", out
                r = await ben.api(
                    "PUT",
                    f"/user/{ben.name}/api/contents/shared/{group}/material/mine.md",
                    json={"type": "file", "format": "text", "content": "x"},
                )
                assert r.status_code >= 400, r.text
                out = await run_code(ben, f"import pathlib\nprint({week1}.read_text())")
                assert out["stdout"] == "Week 1: cells\n", out

            # 4.-5. the instructor starts an exam window in her Cohort panel (a bad token limit
            # is refused there first, saying why); ana's chat is refused, code still runs
            assert (await server_chat(ana)).status_code == 200
            async with signed_in_panel(ivy, "cohort", VIEW) as panel:
                root = panel.page.get_by_test_id("oraculo-cohort")
                await expect(root).to_have_attribute("data-state", "ready", timeout=120_000)
                said = panel.page.get_by_test_id("cohort-policy-message")
                await panel.page.locator(".cohort-policy-tokens input").fill("-5")
                await panel.page.locator(".cohort-policy-tokens input").press("Enter")
                await panel.page.locator(".cohort-policy-save button").click()
                await expect(said).to_have_attribute("data-ok", "false", timeout=60_000)
                await expect(said).to_contain_text("tokens_per_day")
                await snap(panel.page, "instructor-policy-invalid")
                await panel.page.locator(".cohort-policy-tokens input").fill("")
                await panel.page.locator(".cohort-policy-tokens input").press("Enter")
                await panel.page.locator(".cohort-exam-minutes input").fill("30")
                await panel.page.locator(".cohort-exam-start button").click()
                await expect(said).to_have_attribute("data-ok", "true", timeout=60_000)
                policy = panel.page.get_by_test_id("cohort-policy")
                await expect(policy).to_have_attribute("data-ai", "false", timeout=60_000)
                await expect(policy).to_contain_text("exam")
                await snap(panel.page, "instructor-started-exam-window")
                assert not panel.offsite(), panel.offsite()
            r = await ivy.api("GET", f"/hub/api/cohorts/{group}/policy")
            assert len(r.json()["policy"]["exam_windows"]) == 1, r.text
            assert r.json()["policy"]["tokens_per_day"] is None, r.text

            async def refused() -> bool:
                return (await server_chat(ana)).status_code == 403

            await wait_for(refused, 60, "the exam window to pause chat", 1)
            r = await server_chat(ana)
            assert group in r.json()["message"] and "exam" in r.json()["message"], r.text
            r = await ana.api(
                "POST", f"/user/{ana.name}/api/v1/execute", json={"code": "print(6 * 7)"}
            )
            assert r.status_code == 200 and r.json()["stdout"] == "42\n", r.text
            async with signed_in_panel(ana, "chat", VIEW) as panel:
                status = panel.page.get_by_test_id("oraculo-chat")
                await expect(status).to_have_attribute("data-state", "idle", timeout=120_000)
                box = panel.page.locator("textarea").first
                await box.wait_for(timeout=120_000)
                await box.fill("Say hi.")
                await box.press("Enter")
                await expect(status).to_have_attribute("data-state", "error", timeout=60_000)
                await expect(panel.page.get_by_test_id("chat-error")).to_contain_text("exam window")
                await snap(panel.page, "student-chat-refused-in-exam")

            # 6. the instructor ends the window in her panel: chat answers again, no restart
            async with signed_in_panel(ivy, "cohort", VIEW) as panel:
                root = panel.page.get_by_test_id("oraculo-cohort")
                await expect(root).to_have_attribute("data-state", "ready", timeout=120_000)
                await panel.page.locator(".cohort-exam-end button").click()
                said = panel.page.get_by_test_id("cohort-policy-message")
                await expect(said).to_have_attribute("data-ok", "true", timeout=60_000)
                policy = panel.page.get_by_test_id("cohort-policy")
                await expect(policy).to_have_attribute("data-ai", "true", timeout=60_000)
                await snap(panel.page, "instructor-ended-exam-window")
            r = await ivy.api("GET", f"/hub/api/cohorts/{group}/policy")
            assert r.json()["policy"]["exam_windows"] == [], r.text

            async def answers() -> bool:
                return (await server_chat(ana)).status_code == 200

            await wait_for(answers, 60, "chat to answer again", 1)

            # 7. the instructor's launcher has the Cohort tile; she releases the assignment
            await write_source(ivy, group)
            page = await browser.new_page(viewport=VIEW)
            await sign_in(page, hub, ivy.name, f"/user/{ivy.name}/lab")
            lab = re.compile(rf"^{re.escape(hub.url)}/user/{ivy.name}/lab")
            await page.wait_for_url(lab, timeout=180_000)
            await expect(page.locator('.jp-LauncherCard[title="Cohort"]')).to_be_visible(
                timeout=180_000
            )
            await snap(page, "instructor-launcher-cohort-tile")
            await page.close()
        finally:
            await browser.close()

    async with signed_in_panel(ivy, "cohort", VIEW) as panel:
        page = panel.page
        root = page.get_by_test_id("oraculo-cohort")
        await expect(root).to_have_attribute("data-state", "ready", timeout=120_000)
        await expect(root).to_have_attribute("data-cohort", group)
        # the cohort as the hub sees it: members and their servers, no sign-up waiting, AI on
        for person in (ana, ben):
            member = page.locator(f'[data-testid=cohort-members] tr[data-member="{person.name}"]')
            await expect(member).to_have_attribute("data-server", "running")
        await expect(page.get_by_test_id("cohort-pending")).to_contain_text("none")
        await expect(page.get_by_test_id("cohort-policy")).to_have_attribute("data-ai", "true")
        await page.locator(".cohort-assignment input").fill(ASSIGNMENT)
        await page.locator(".cohort-release button").click()
        await expect(page.get_by_test_id("cohort-message")).to_have_attribute(
            "data-ok", "true", timeout=120_000
        )
        row = page.locator(f'[data-testid=cohort-assignments] tr[data-assignment="{ASSIGNMENT}"]')
        await expect(row).to_have_attribute("data-state", "released", timeout=120_000)
        await snap(page, "instructor-released")
        assert not panel.offsite(), panel.offsite()

    # 8. ana fetches it into her home, completes it in JupyterLab (types the solution, runs
    # the tests, saves) and submits it
    async with signed_in_panel(ana, "cohort", VIEW) as panel:
        page = panel.page
        root = page.get_by_test_id("oraculo-cohort")
        await expect(root).to_have_attribute("data-state", "ready", timeout=120_000)
        row = page.locator(f'[data-testid=cohort-assignments] tr[data-assignment="{ASSIGNMENT}"]')
        await expect(row).to_have_attribute("data-state", "released", timeout=120_000)
        if AS_ROOT:  # the cohort she joined while her server ran: restart to open it
            notice = page.get_by_test_id("cohort-notice")
            await expect(notice).to_have_attribute("data-cohorts", f"{group}b")
            await expect(notice).to_contain_text("restart it")
        await page.locator(".cohort-fetch button").click()
        await expect(row).to_have_attribute("data-state", "fetched", timeout=120_000)
        await snap(page, "student-fetched")
        await complete_in_lab(page, hub, ana, group, artifacts)
        await snap(page, "student-completed-in-jupyterlab")
        await page.goto(f"{hub.url}/user/{ana.name}/oraculo-panels/cohort")
        root = page.get_by_test_id("oraculo-cohort")
        await expect(root).to_have_attribute("data-state", "ready", timeout=120_000)
        row = page.locator(f'[data-testid=cohort-assignments] tr[data-assignment="{ASSIGNMENT}"]')
        await expect(row).to_have_attribute("data-state", "fetched", timeout=120_000)
        await page.locator(".cohort-submit button").click()
        await expect(row).to_have_attribute("data-state", "submitted", timeout=120_000)
        await snap(page, "student-submitted")
        await expect(page.locator(".cohort-collect")).to_have_count(0)

    # 9. the instructor collects and autogrades; the score is in the Cohort panel
    async with signed_in_panel(ivy, "cohort", VIEW) as panel:
        page = panel.page
        root = page.get_by_test_id("oraculo-cohort")
        await expect(root).to_have_attribute("data-state", "ready", timeout=120_000)
        await page.locator(".cohort-assignment input").fill(ASSIGNMENT)
        await page.locator(".cohort-collect button").click()
        score = page.locator(f'[data-testid=cohort-scores] tr[data-student="{ana.name}"]')
        await expect(score).to_have_attribute("data-score", "2", timeout=300_000)
        await expect(score).to_contain_text("2 / 2")
        # each student's AI use this week: ana chatted, so she has tokens in the table
        used = page.locator(f'[data-testid=cohort-usage] tr[data-user="{ana.name}"]')
        await expect(used).to_be_visible()
        await snap(page, "instructor-scores")
        assert not panel.offsite(), panel.offsite()

    # a student reads the cohort's totals from the model service, never classmates' shares
    r = await ben.api(
        "GET", "/services/models/v1/usage/summary", params={"group": group, "period": "week"}
    )
    assert r.status_code == 200 and "users" not in r.json(), r.text
