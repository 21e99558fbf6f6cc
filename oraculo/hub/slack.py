"""The Slack app: a hub service (``/services/slack/``) that answers in Slack with the asker's own
workspace.

Slack sends events to ``/services/slack/events`` (Bolt's tornado adapter, ``slack-bolt``); Bolt
checks each request's signature with the app's signing secret and refuses a bad signature or a
timestamp more than five minutes old (401). A message to the app (a DM, or a mention in a
channel) from a Slack user who has linked their hub account is asked of that user's own server
(``POST /user/<name>/api/v1/chat/completions``, with the service's token), so the answer draws
on their memories and workspace passages; it is posted in the message's thread with the
passages and memories it used. Nothing runs code from Slack (``run: <code>``) unless the user
turned it on on their settings page.

Linking: a Slack user who is not linked gets, in a DM from the app, a one-time link to
``/services/slack/link?code=...`` (valid 15 minutes). Opening it signs them in to the hub (hub
OAuth) and asks them to confirm; the link (Slack team and user → hub user, and whether code may
run) is stored server-side in the service's sqlite file under the hub's data folder.
``/services/slack/settings`` shows the user's links, turns running code on or off, and unlinks.

Slack's Web API is called with the bot token at ``ORACULO_SLACK_API_URL`` (default Slack's own);
nothing is sent anywhere unless the app is configured (``ORACULO_SLACK_SIGNING_SECRET`` and
``ORACULO_SLACK_BOT_TOKEN``).
"""

from __future__ import annotations

import asyncio
import html
import os
import re
import secrets
import sqlite3
import time
from pathlib import Path
from typing import Any

import httpx
from jupyterhub.services.auth import HubOAuthCallbackHandler, HubOAuthenticated
from jupyterhub.utils import url_path_join
from slack_bolt.adapter.tornado.async_handler import AsyncSlackEventsHandler
from slack_bolt.async_app import AsyncApp
from slack_sdk.web.async_client import AsyncWebClient
from tornado import httpserver, ioloop, web

#: Seconds a linking code stays valid.
CODE_TTL = 15 * 60
SLACK_API = "https://slack.com/api/"


class Links:
    """Slack identities linked to hub users, and pending one-time linking codes (sqlite)."""

    def __init__(self, path: str) -> None:
        Path(path).parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        self.db = sqlite3.connect(path, isolation_level=None)
        os.chmod(path, 0o600)
        self.db.executescript(
            """
            CREATE TABLE IF NOT EXISTS links (team TEXT, slack_user TEXT,
                hub_user TEXT NOT NULL, allow_code INTEGER NOT NULL DEFAULT 0, linked_at REAL,
                PRIMARY KEY (team, slack_user));
            CREATE TABLE IF NOT EXISTS codes (code TEXT PRIMARY KEY, team TEXT, slack_user TEXT,
                expires REAL);
            """
        )

    def get(self, team: str, slack_user: str) -> tuple[str, bool] | None:
        row = self.db.execute(
            "SELECT hub_user, allow_code FROM links WHERE team=? AND slack_user=?",
            (team, slack_user),
        ).fetchone()
        return None if row is None else (str(row[0]), bool(row[1]))

    def of(self, hub_user: str) -> list[tuple[str, str, bool]]:
        rows = self.db.execute(
            "SELECT team, slack_user, allow_code FROM links WHERE hub_user=? ORDER BY linked_at",
            (hub_user,),
        )
        return [(str(t), str(u), bool(a)) for t, u, a in rows]

    def new_code(self, team: str, slack_user: str) -> str:
        code = secrets.token_urlsafe(24)
        self.db.execute("DELETE FROM codes WHERE expires < ?", (time.time(),))
        self.db.execute(
            "INSERT INTO codes VALUES (?, ?, ?, ?)",
            (code, team, slack_user, time.time() + CODE_TTL),
        )
        return code

    def peek(self, code: str) -> tuple[str, str] | None:
        row = self.db.execute(
            "SELECT team, slack_user FROM codes WHERE code=? AND expires >= ?", (code, time.time())
        ).fetchone()
        return None if row is None else (str(row[0]), str(row[1]))

    def link(self, code: str, hub_user: str, allow_code: bool) -> tuple[str, str] | None:
        who = self.peek(code)
        if who is None:
            return None
        self.db.execute("DELETE FROM codes WHERE code=?", (code,))
        self.db.execute(
            "INSERT OR REPLACE INTO links VALUES (?, ?, ?, ?, ?)",
            (*who, hub_user, int(allow_code), time.time()),
        )
        return who

    def update(self, hub_user: str, team: str, slack_user: str, allow_code: bool | None) -> None:
        where = "hub_user=? AND team=? AND slack_user=?"
        if allow_code is None:
            self.db.execute(f"DELETE FROM links WHERE {where}", (hub_user, team, slack_user))
        else:
            self.db.execute(
                f"UPDATE links SET allow_code=? WHERE {where}",
                (int(allow_code), hub_user, team, slack_user),
            )


class Assistant:
    """Asks a hub user's own server, with the service's token."""

    def __init__(self, hub_url: str, token: str, public_url: str) -> None:
        self.hub_url = hub_url.rstrip("/")
        self.public_url = public_url.rstrip("/")
        self.http = httpx.AsyncClient(
            headers={"Authorization": f"token {token}"}, timeout=httpx.Timeout(300, connect=10)
        )

    async def ask(self, user: str, question: str) -> str:
        r = await self.http.post(
            f"{self.hub_url}/user/{user}/api/v1/chat/completions",
            json={
                "messages": [{"role": "user", "content": question}],
                "temperature": 0,
                "seed": 0,
                "max_tokens": 160,
            },
        )
        if r.status_code != 200:
            return _failed(r, user)
        body = r.json()
        answer = str(body["choices"][0]["message"].get("content") or "").strip()
        extra = body.get("oraculo") or {}
        used = [f"`{c['path']}`" for c in extra.get("citations", []) if c.get("path")]
        used += [f"memory `{m['key']}`" for m in extra.get("memories", []) if m.get("key")]
        if used:
            answer += "\n_From: " + ", ".join(dict.fromkeys(used)) + "_"
        return answer or "(no answer)"

    async def run(self, user: str, code: str) -> str:
        r = await self.http.post(
            f"{self.hub_url}/user/{user}/api/v1/execute", json={"code": code, "timeout": 30}
        )
        if r.status_code != 200:
            return _failed(r, user)
        out = r.json()
        text = out.get("output") or ""
        text += "".join(str(b.get("text/plain", "")) + "\n" for b in out.get("results", []))
        if out.get("error"):
            text += f"{out['error']['name']}: {out['error']['value']}"
        return f"```\n{text.strip()[:3000] or '(no output)'}\n```"


def _failed(r: httpx.Response, user: str) -> str:
    if r.status_code in (404, 503) or "not running" in r.text:
        return f"{user}'s Oráculo server is not running: start it in the workspace, then ask again."
    try:
        message = r.json().get("message") or r.text[:300]
    except ValueError:
        message = r.text[:300]
    return f"Oráculo could not answer ({r.status_code}): {message}"


def build_bolt(links: Links, assistant: Assistant, prefix: str, **slack: Any) -> AsyncApp:
    app = AsyncApp(**slack)

    async def answer(event: dict[str, Any], context: dict[str, Any], client: Any) -> None:
        if event.get("bot_id") or event.get("subtype"):
            return  # the app's own messages, edits, joins
        team = str(event.get("team") or context.get("team_id") or "")
        slack_user = str(event.get("user") or "")
        channel = str(event["channel"])
        thread = event.get("thread_ts") or event["ts"]
        text = re.sub(r"<@[A-Z0-9]+>", "", str(event.get("text") or "")).strip()
        linked = links.get(team, slack_user)
        if linked is None:
            code = links.new_code(team, slack_user)
            url = f"{assistant.public_url}{prefix}link?code={code}"
            # the link goes to the asker alone (a DM), never to the channel
            await client.chat_postMessage(
                channel=slack_user,
                text=f"To ask Oráculo from Slack, link your hub account (valid 15 minutes): {url}",
            )
            return
        hub_user, allow_code = linked
        match = re.match(r"^run:\s*(?:```)?(.*?)(?:```)?\s*$", text, re.S)
        if match:
            if allow_code:
                reply = await assistant.run(hub_user, match.group(1))
            else:
                reply = (
                    "Running code from Slack is off for your account. Turn it on at "
                    f"{assistant.public_url}{prefix}settings"
                )
        else:
            reply = await assistant.ask(hub_user, text)
        await client.chat_postMessage(channel=channel, thread_ts=thread, text=reply)

    async def direct(event: dict[str, Any], context: dict[str, Any], client: Any) -> None:
        # only DMs: a mention in a channel comes as app_mention (answered once), and other
        # channel messages are not for the app
        if event.get("channel_type") == "im":
            await answer(event, context, client)

    app.event("app_mention")(answer)
    app.event("message")(direct)
    return app


class EventsHandler(AsyncSlackEventsHandler):
    """Slack's events: Bolt checks the signing secret, which stands in for an XSRF token."""

    def check_xsrf_cookie(self) -> None:
        pass


PAGE = """<!doctype html><html><head><meta charset="utf-8"><title>Oráculo for Slack</title>
</head><body style="font-family: sans-serif; max-width: 40em; margin: 2em auto">{}</body></html>"""


class _Page(HubOAuthenticated, web.RequestHandler):
    def initialize(self, links: Links) -> None:
        self.links = links

    def page(self, body: str) -> None:
        self.set_header("Content-Security-Policy", "default-src 'self'")
        self.finish(PAGE.format(body))

    @property
    def hub_user(self) -> str:
        return str(self.current_user["name"])


class LinkHandler(_Page):
    """``GET /link?code=``: confirm linking that Slack identity; ``POST``: link it."""

    @web.authenticated
    def get(self) -> None:
        who = self.links.peek(self.get_argument("code", ""))
        if who is None:
            raise web.HTTPError(404, "This linking code is unknown or has expired")
        self.page(
            f"<h1>Link Slack to Oráculo</h1><p>Link the Slack user <b>{html.escape(who[1])}</b>"
            f" (team {html.escape(who[0])}) to your hub account <b>{html.escape(self.hub_user)}"
            "</b>? Its questions will be answered from your workspace.</p>"
            f'<form method="post">{self.xsrf_form_html()}'
            f'<input type="hidden" name="code" value="{html.escape(self.get_argument("code"))}">'
            '<label><input type="checkbox" name="allow_code" id="allow_code"> Let me run code'
            " from Slack (<code>run: ...</code>)</label><br><br>"
            '<button type="submit" id="link">Link</button></form>'
        )

    @web.authenticated
    def post(self) -> None:
        allow = self.get_argument("allow_code", "") == "on"
        who = self.links.link(self.get_argument("code", ""), self.hub_user, allow)
        if who is None:
            raise web.HTTPError(404, "This linking code is unknown or has expired")
        self.page(
            f'<h1 id="linked">Linked</h1><p>Slack user {html.escape(who[1])} is now '
            f"{html.escape(self.hub_user)}. Ask the app in a DM or mention it in a channel.</p>"
        )


class SettingsHandler(_Page):
    """``GET /settings``: the user's links; ``POST``: allow or stop code, or unlink."""

    @web.authenticated
    def get(self) -> None:
        rows = []
        for team, user, allowed in self.links.of(self.hub_user):
            hidden = (
                f"{self.xsrf_form_html()}"
                f'<input type="hidden" name="team" value="{html.escape(team)}">'
                f'<input type="hidden" name="slack_user" value="{html.escape(user)}">'
            )
            toggle = "deny_code" if allowed else "allow_code"
            rows.append(
                f"<li>{html.escape(user)} (team {html.escape(team)}): running code is "
                f"<b>{'on' if allowed else 'off'}</b>"
                f'<form method="post">{hidden}<button name="action" value="{toggle}">'
                f"{'Stop' if allowed else 'Allow'} running code</button> "
                '<button name="action" value="unlink">Unlink</button></form></li>'
            )
        self.page(
            "<h1>Oráculo for Slack</h1><ul id='links'>"
            f"{''.join(rows) or '<li>No Slack account linked</li>'}</ul>"
        )

    @web.authenticated
    def post(self) -> None:
        action = self.get_argument("action")
        if action not in ("allow_code", "deny_code", "unlink"):
            raise web.HTTPError(400, "action is allow_code, deny_code or unlink")
        allow = {"allow_code": True, "deny_code": False, "unlink": None}[action]
        self.links.update(
            self.hub_user, self.get_argument("team"), self.get_argument("slack_user"), allow
        )
        self.redirect(self.request.path)


def main() -> None:
    prefix = os.environ.get("JUPYTERHUB_SERVICE_PREFIX", "/services/slack/")
    data_dir = os.environ.get("ORACULO_DATA_DIR", ".data")
    links = Links(os.path.join(data_dir, "slack", "links.sqlite"))
    token = os.environ["JUPYTERHUB_API_TOKEN"]
    public = os.environ.get("ORACULO_PUBLIC_URL", "http://127.0.0.1:8000")
    assistant = Assistant(public, token, public)
    client = AsyncWebClient(
        token=os.environ["ORACULO_SLACK_BOT_TOKEN"],
        base_url=os.environ.get("ORACULO_SLACK_API_URL") or SLACK_API,
    )
    bolt = build_bolt(
        links,
        assistant,
        prefix,
        signing_secret=os.environ["ORACULO_SLACK_SIGNING_SECRET"],
        client=client,
    )
    page = {"links": links}
    app = web.Application(
        [
            (url_path_join(prefix, "events"), EventsHandler, {"app": bolt}),
            (url_path_join(prefix, "link"), LinkHandler, page),
            (url_path_join(prefix, "settings"), SettingsHandler, page),
            (url_path_join(prefix, "oauth_callback"), HubOAuthCallbackHandler),
            (prefix, web.RedirectHandler, {"url": url_path_join(prefix, "settings")}),
        ],
        cookie_secret=secrets.token_bytes(32),
        # the link and settings forms: a page elsewhere must not link its own Slack user to
        # a signed-in hub user (who would then answer the attacker's questions)
        xsrf_cookies=True,
    )
    url = os.environ.get("JUPYTERHUB_SERVICE_URL", "http://127.0.0.1:8003")
    host, _, port = url.split("://")[1].rstrip("/").partition(":")
    server = httpserver.HTTPServer(app, xheaders=True)
    server.listen(int(port or 80), host)
    ioloop.IOLoop.current().start()


if __name__ == "__main__":
    asyncio.set_event_loop(asyncio.new_event_loop())
    main()
