"""The Slack app end to end: a hub with the Slack service and the model service; Slack's side
played by the test: events signed with the signing secret the way Slack signs them (and some
signed wrongly, or too old), and Slack's Web API answered by a local server that records every
message the app posts (``ORACULO_SLACK_API_URL``).
"""

from __future__ import annotations

import hashlib
import hmac
import json
import re
import threading
import time
import uuid
from collections.abc import AsyncIterator, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.harness import HubClient, HubProcess, User, free_port, new_user, wait_for

SECRET = "8f14e45fceea167a5a36dedd4bea2543"
BOT_TOKEN = "xoxb-test-oraculo"
TEAM = "T0TEAM"
SLACK_ALICE = "U0ALICE"


class FakeSlackAPI:
    """Slack's Web API for the app: ``auth.test`` and ``chat.postMessage``, recorded."""

    def __init__(self) -> None:
        self.posted: list[dict[str, Any]] = []
        self.tokens: set[str] = set()
        self.methods: list[str] = []
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args: Any) -> None:
                pass

            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                outer.tokens.add(self.headers.get("Authorization", ""))
                method = self.path.split("?")[0].rstrip("/").rsplit("/", 1)[-1]
                outer.methods.append(method)
                if method == "chat.postMessage":
                    outer.posted.append(json.loads(body or b"{}"))
                    answer = {"ok": True, "ts": f"{time.time():.6f}"}
                elif method == "auth.test":
                    answer = {"ok": True, "team_id": TEAM, "user_id": "U0BOT", "bot_id": "B0BOT"}
                else:
                    answer = {"ok": False, "error": f"unknown_method {method}"}
                data = json.dumps(answer).encode()
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}/api/"
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)
        self.thread.start()

    def stop(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()
        self.thread.join(10)


@pytest.fixture(scope="module")
def slack_api() -> Iterator[FakeSlackAPI]:
    api = FakeSlackAPI()
    try:
        yield api
    finally:
        api.stop()


@pytest.fixture(scope="module")
async def slack_hub(
    tmp_path_factory: pytest.TempPathFactory, slack_api: FakeSlackAPI
) -> AsyncIterator[HubProcess]:
    env = {
        "ORACULO_SLACK_SIGNING_SECRET": SECRET,
        "ORACULO_SLACK_BOT_TOKEN": BOT_TOKEN,
        "ORACULO_SLACK_API_URL": slack_api.url,
        "ORACULO_SLACK_PORT": str(free_port()),
    }
    hub = HubProcess(tmp_path_factory.mktemp("slack-hub"), models=True, env=env)
    await hub.start()

    async def ready() -> bool:
        async with httpx.AsyncClient(timeout=5) as c:
            health = await c.get(f"{hub.url}/services/models/health")
            slack = await c.post(f"{hub.url}/services/slack/events", content=b"{}")
            return health.json().get("status") == "ok" and slack.status_code == 401

    try:
        await wait_for(ready, 180, "the model service and the Slack app", 0.25)
        yield hub
    finally:
        hub.stop()


@pytest.fixture(scope="module")
async def alice(slack_hub: HubProcess) -> AsyncIterator[User]:
    client = HubClient(slack_hub)
    user = await new_user(client, "alice")
    await user.spawn()
    try:
        yield user
    finally:
        await client.aclose()


def signed(body: bytes, secret: str = SECRET, age: float = 0) -> dict[str, str]:
    ts = str(int(time.time() - age))
    mac = hmac.new(secret.encode(), f"v0:{ts}:".encode() + body, hashlib.sha256).hexdigest()
    return {
        "X-Slack-Request-Timestamp": ts,
        "X-Slack-Signature": f"v0={mac}",
        "Content-Type": "application/json",
    }


def event(
    text: str, user: str = SLACK_ALICE, channel: str = "C0GENERAL", kind: str = "app_mention"
) -> dict[str, Any]:
    ts = f"{time.time():.6f}"
    return {
        "token": "unused",
        "team_id": TEAM,
        "api_app_id": "A0APP",
        "type": "event_callback",
        "event_id": f"Ev{uuid.uuid4().hex[:10]}",
        "event_time": int(time.time()),
        "event": {
            "type": kind,
            "channel_type": "im" if channel.startswith("D") else "channel",
            "user": user,
            "team": TEAM,
            "text": f"<@U0BOT> {text}",
            "ts": ts,
            "channel": channel,
            "event_ts": ts,
        },
    }


async def send(hub: HubProcess, payload: dict[str, Any], **sign: Any) -> httpx.Response:
    body = json.dumps(payload).encode()
    async with httpx.AsyncClient(timeout=30) as c:
        return await c.post(
            f"{hub.url}/services/slack/events", content=body, headers=signed(body, **sign)
        )


async def posted(api: FakeSlackAPI, after: int, **match: Any) -> dict[str, Any]:
    async def found() -> dict[str, Any] | None:
        for msg in api.posted[after:]:
            if all(msg.get(k) == v for k, v in match.items()):
                return msg
        return None

    result: dict[str, Any] = await wait_for(found, 240, f"a Slack message {match}", 0.2)
    return result


async def test_requests_are_verified_with_the_signing_secret(slack_hub: HubProcess) -> None:
    challenge = {"type": "url_verification", "challenge": "c-42", "token": "x"}
    r = await send(slack_hub, challenge)
    assert r.status_code == 200 and r.json()["challenge"] == "c-42"
    assert (await send(slack_hub, challenge, secret="not-the-secret")).status_code == 401
    assert (await send(slack_hub, challenge, age=10 * 60)).status_code == 401  # replayed
    async with httpx.AsyncClient() as c:
        r = await c.post(f"{slack_hub.url}/services/slack/events", json=challenge)
        assert r.status_code == 401  # unsigned


async def test_link_then_ask_in_a_thread_with_my_memories_and_passages(
    slack_hub: HubProcess, slack_api: FakeSlackAPI, alice: User, artifacts: Path
) -> None:
    base = f"/user/{alice.name}/api"
    note = "# Field notes\n\nThe Quilotoa expedition measured the crater lake at 3,914 metres.\n"
    await alice.api("PUT", f"{base}/contents/notes", json={"type": "directory"})
    r = await alice.api(
        "PUT",
        f"{base}/contents/notes/quilotoa.md",
        json={"type": "file", "format": "text", "content": note},
    )
    assert r.status_code in (200, 201), r.text
    memory = {"key": "lake_depths", "value": "Give lake depths in metres, never feet."}
    assert (await alice.api("POST", f"{base}/v1/memory", json=memory)).status_code in (200, 201)
    assert (await alice.api("POST", f"{base}/v1/memory/index")).status_code == 202

    async def indexed() -> bool:
        r = await alice.api("GET", f"{base}/v1/memory/index", params={"q": "Quilotoa lake"})
        return any(p["path"] == "notes/quilotoa.md" for p in r.json()["passages"])

    await wait_for(indexed, 120, "the index to have the note", 0.5)

    # not linked yet: the app answers with a linking link, in a DM to the asker only
    n = len(slack_api.posted)
    r = await send(slack_hub, event("How deep is the Quilotoa crater lake?"))
    assert r.status_code == 200
    dm = await posted(slack_api, n, channel=SLACK_ALICE)
    link = re.search(r"(http://\S+/services/slack/link\?code=\S+)", dm["text"])
    assert link, dm
    assert not [m for m in slack_api.posted[n:] if m["channel"] == "C0GENERAL"]
    assert slack_api.tokens == {f"Bearer {BOT_TOKEN}"}

    # alice opens it (signed in to the hub) and confirms
    http = alice.client.http
    r = await http.get(link.group(1), follow_redirects=True)
    assert r.status_code == 200 and SLACK_ALICE in r.text and alice.name in r.text, r.text
    (artifacts / "slack-link.html").write_text(r.text)
    xsrf = re.search(r'name="_xsrf" value="([^"]+)"', r.text)
    assert xsrf
    code = link.group(1).split("code=")[1]
    r = await http.post(
        str(r.url), data={"code": code, "_xsrf": xsrf.group(1)}, follow_redirects=True
    )
    assert r.status_code == 200 and 'id="linked"' in r.text, r.text
    # the code works once; without the XSRF token nothing is linked
    r = await http.post(str(r.url), data={"code": code, "_xsrf": xsrf.group(1)})
    assert r.status_code == 404

    # now asked in a channel: the answer comes in the thread, from alice's own workspace
    n = len(slack_api.posted)
    ask = event("How deep is the Quilotoa crater lake?")
    assert (await send(slack_hub, ask)).status_code == 200
    reply = await posted(slack_api, n, channel="C0GENERAL", thread_ts=ask["event"]["ts"])
    assert "`notes/quilotoa.md`" in reply["text"] and "memory `lake_depths`" in reply["text"]
    answer = reply["text"].split("\n_From:")[0].strip()
    assert answer and "could not answer" not in answer, reply

    # in a DM too; a plain channel message (not a mention) is not for the app
    n = len(slack_api.posted)
    chatter = event("lunch anyone?", kind="message")
    dm_ask = event("How deep is the Quilotoa crater lake?", channel="D0ALICE", kind="message")
    await send(slack_hub, chatter)
    await send(slack_hub, dm_ask)
    await posted(slack_api, n, channel="D0ALICE", thread_ts=dm_ask["event"]["ts"])
    assert not [m for m in slack_api.posted[n:] if m.get("thread_ts") == chatter["event"]["ts"]]

    # code from Slack: off until alice turns it on
    n = len(slack_api.posted)
    run = event("run: print(6 * 7)")
    await send(slack_hub, run)
    refused = await posted(slack_api, n, thread_ts=run["event"]["ts"])
    # no 42 of its own (the settings link's port may hold the digits)
    assert "off" in refused["text"] and not re.search(r"\b42\b", refused["text"])
    r = await alice.api("GET", f"{base}/v1/execute/audit")
    assert not any("6 * 7" in (rec.get("code") or "") for rec in r.json()["records"])
    r = await http.get(f"{slack_hub.url}/services/slack/settings", follow_redirects=True)
    assert r.status_code == 200 and "<b>off</b>" in r.text
    form = re.search(r'name="_xsrf" value="([^"]+)"', r.text)
    assert form
    token = form.group(1)
    r = await http.post(
        f"{slack_hub.url}/services/slack/settings",
        data={"team": TEAM, "slack_user": SLACK_ALICE, "action": "allow_code", "_xsrf": token},
        follow_redirects=True,
    )
    assert r.status_code == 200 and "<b>on</b>" in r.text, r.text
    n = len(slack_api.posted)
    run = event("run: print(6 * 7)")
    await send(slack_hub, run)
    ran = await posted(slack_api, n, thread_ts=run["event"]["ts"])
    assert "42" in ran["text"], ran


async def test_a_forged_event_runs_nothing(
    slack_hub: HubProcess, slack_api: FakeSlackAPI, alice: User
) -> None:
    n = len(slack_api.posted)
    for kw in ({"secret": "guessed"}, {"age": 3600}):
        r = await send(slack_hub, event("run: open('/tmp/forged', 'w')"), **kw)
        assert r.status_code == 401
    r = await alice.api("GET", f"/user/{alice.name}/api/v1/execute/audit")
    assert not any("forged" in (rec.get("code") or "") for rec in r.json()["records"])
    assert slack_api.posted[n:] == []


@pytest.mark.browser
async def test_linking_in_the_browser(
    slack_hub: HubProcess, slack_api: FakeSlackAPI, artifacts: Path
) -> None:
    """What a person does: open the link the app sent them, sign in, confirm, see the link."""
    from playwright.async_api import async_playwright

    from tests.harness import CHROMIUM_ARGS, PASSWORD

    client = HubClient(slack_hub)
    bea = await new_user(client, "bea")
    try:
        n = len(slack_api.posted)
        await send(slack_hub, event("hello", user="U0BEA"))
        dm = await posted(slack_api, n, channel="U0BEA")
        link = re.search(r"(http://\S+/services/slack/link\?code=\S+)", dm["text"])
        assert link, dm
        seen: list[str] = []
        async with async_playwright() as pw:
            browser = await pw.chromium.launch(
                executable_path="/usr/bin/chromium", args=CHROMIUM_ARGS
            )
            try:
                page = await browser.new_page(viewport={"width": 1100, "height": 700})
                page.on("request", lambda r: seen.append(r.url))
                await page.goto(link.group(1))
                await page.fill("#username_input", bea.name)
                await page.fill("#password_input", PASSWORD)
                await page.screenshot(path=str(artifacts / "slack-1-sign-in.png"))
                await page.click("#login_submit")
                await page.wait_for_selector("#link", timeout=60_000)
                assert "U0BEA" in await page.content()
                await page.screenshot(path=str(artifacts / "slack-2-confirm.png"))
                await page.click("#link")
                await page.wait_for_selector("#linked", timeout=30_000)
                await page.screenshot(path=str(artifacts / "slack-3-linked.png"))
                await page.goto(f"{slack_hub.url}/services/slack/settings")
                await page.get_by_text("Allow running code").click()
                await page.wait_for_selector("text=Stop running code", timeout=30_000)
                await page.screenshot(path=str(artifacts / "slack-4-settings.png"))
            finally:
                await browser.close()
        hosts = {u.split("/")[2] for u in seen if u.startswith("http")}
        assert hosts <= {slack_hub.url.split("/")[2]}, hosts
    finally:
        await client.aclose()
