"""What a new user tripped over in the panels, fixed and walked in Chromium: the Voice panel
without a microphone says so plainly and takes typed questions; the Chat panel asks before it
deletes a conversation (and clears its title), shows a reloaded conversation's own times, and
its citations open the file in JupyterLab.
"""

from __future__ import annotations

import datetime as dt
import sqlite3
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from playwright.async_api import expect

from oraculo.extensions.panels.chat import render_citations
from tests.harness import HubClient, HubProcess, User, new_user, signed_in_panel

pytestmark = pytest.mark.browser


@pytest.fixture(scope="module")
async def vera(hub: HubProcess) -> AsyncIterator[User]:
    client = HubClient(hub)
    user = await new_user(client, "vera")
    await user.spawn()
    yield user
    await user.client.aclose()
    await client.aclose()


def test_citations_are_links_into_jupyterlab() -> None:
    html = render_citations(
        [{"index": 1, "path": "notes/a b.md", "start_line": 2, "end_line": 4}],
        [{"key": "units"}],
        "/user/vera/",
    )
    assert 'href="/user/vera/lab/tree/notes/a%20b.md"' in html and 'target="_blank"' in html
    assert "memory <code>units</code>" in html
    assert "href" not in render_citations([{"index": 1, "path": "x.md"}], [])  # no base: text


async def test_voice_without_a_microphone_offers_a_text_box(vera: User, artifacts: Path) -> None:
    # Chromium here has no audio device (no fake one is asked for).
    async with signed_in_panel(vera, "voice", {"width": 1000, "height": 700}) as panel:
        page = panel.page
        await page.get_by_test_id("voice-start").click()
        error = page.get_by_test_id("voice-error")
        await expect(error).to_contain_text("microphone", timeout=30_000)
        assert "NotFoundError" not in await error.inner_text()
        box = page.get_by_test_id("voice-text")
        await expect(box).to_be_visible()
        await box.fill("Say hello in one word.")
        await box.press("Enter")
        root = page.get_by_test_id("oraculo-voice")
        await expect(root).to_have_attribute("data-state", "typed", timeout=120_000)
        await expect(page.get_by_test_id("voice-reply")).not_to_be_empty()
        await expect(page.get_by_test_id("voice-transcript")).to_contain_text("Say hello")
        await page.screenshot(path=str(artifacts / "voice-no-microphone.png"))
    assert not panel.bad, panel.bad


async def test_chat_panel_times_and_confirmed_delete(
    vera: User, hub: HubProcess, artifacts: Path
) -> None:
    body = {
        "messages": [{"role": "user", "content": "An old question"}],
        "max_tokens": 4,
        "store": True,
    }
    r = await vera.api("POST", f"/user/{vera.name}/api/v1/chat", json=body)
    assert r.status_code == 200, r.text
    cid = r.json()["oraculo"]["conversation_id"]
    # Said three days ago: the reloaded conversation must say so, not show the load time.
    db = hub.data_dir / "users" / vera.name / ".oraculo" / "conversations.sqlite"
    with sqlite3.connect(db) as conn:
        conn.execute("UPDATE messages SET created_at = created_at - 3 * 86400")
    then = (dt.datetime.now() - dt.timedelta(days=3)).strftime("%d %b %Y")
    async with signed_in_panel(vera, "chat", {"width": 1300, "height": 850}) as panel:
        page = panel.page
        status = page.get_by_test_id("oraculo-chat")
        await expect(status).to_have_attribute("data-state", "idle", timeout=90_000)
        select = page.locator(".chat-conversations select")
        await select.select_option(label="An old question · 2")
        await expect(page.get_by_text("An old question").last).to_be_visible()
        await expect(page.get_by_text(then).first).to_be_visible(timeout=30_000)
        await page.screenshot(path=str(artifacts / "chat-reloaded-times.png"))
        # Delete asks first; the second click deletes and clears the title.
        delete = page.locator(".chat-delete button")
        await delete.click()
        await expect(delete).to_have_text("Really delete?")
        r = await vera.api("GET", f"/user/{vera.name}/api/v1/chat/conversations/{cid}")
        assert r.status_code == 200  # not yet
        await page.screenshot(path=str(artifacts / "chat-delete-confirm.png"))
        await delete.click()
        await expect(delete).to_have_text("Delete")
        title = page.locator("input[placeholder=Title]")
        await expect(title).to_have_value("")
        await expect(select).not_to_contain_text("An old question")
        r = await vera.api("GET", f"/user/{vera.name}/api/v1/chat/conversations/{cid}")
        assert r.status_code == 404
    assert not panel.bad, panel.bad
