"""The model service's root page (``/services/models/``), for people rather than programs.

Under the hub, people sign in with hub OAuth (the hub's Services menu links here). A user sees
the models they may use, with what each is for, their own usage this month and their budgets; an
operator (a token with the usage read-all scope) also gets a link to the operator's dashboard.
Standalone (API keys), the page says what the service is and where its API is. Programs keep
using ``v1/...`` with a bearer token; nothing here changes what a token may do.
"""

from __future__ import annotations

import asyncio
import html
import time
from typing import Any

from jupyterhub.services.auth import HubOAuth, HubOAuthCallbackHandler, HubOAuthenticated
from tornado import web

from .auth import USAGE_READ_ALL, HubAuthenticator, Identity
from .service import ModelService
from .usage import period_end, period_start, summary

#: Where the operator's dashboard answers (a hub service; see oraculo.hub.config).
DASHBOARD_URL = "/services/usage-dashboard/"
KINDS = {
    "chat": "chat and code (POST v1/chat/completions)",
    "embedding": "embeddings for search and memory (POST v1/embeddings)",
    "transcription": "speech to text (POST v1/audio/transcriptions)",
    "speech": "text to speech (POST v1/audio/speech)",
}
CSS = (
    "body{font-family:system-ui,sans-serif;max-width:860px;margin:24px auto;padding:0 16px;"
    "color:#212529}table{border-collapse:collapse;width:100%;margin-bottom:16px}"
    "th,td{text-align:left;padding:4px 8px;border-bottom:1px solid #dee2e6}"
    "td.n{text-align:right}.op{background:#e7f5ff;padding:10px 14px;border-radius:6px}"
)


def _e(v: Any) -> str:
    return html.escape(str(v), quote=True)


def _page(title: str, body: str) -> str:
    return (
        f'<!doctype html><html lang="en"><head><meta charset="utf-8"><title>{_e(title)}</title>'
        f'<style>{CSS}</style></head><body data-testid="models-root"><h1>{_e(title)}</h1>'
        f"{body}</body></html>"
    )


class _PageHeaders(web.RequestHandler):
    def set_default_headers(self) -> None:
        self.set_header("Content-Type", "text/html; charset=UTF-8")
        self.set_header("X-Content-Type-Options", "nosniff")
        self.set_header("Cache-Control", "no-store")
        self.set_header("X-Frame-Options", "DENY")
        self.set_header(
            "Content-Security-Policy",
            "default-src 'none'; style-src 'unsafe-inline'; frame-ancestors 'none'",
        )

    def initialize(self, service: ModelService) -> None:
        self.service = service

    def models_table(self) -> str:
        rows = "".join(
            f"<tr><td><code>{_e(b.spec.name)}</code></td>"
            f"<td>{_e(', '.join(b.spec.aliases))}</td>"
            f"<td>{_e(KINDS.get(b.spec.kind, b.spec.kind))}</td></tr>"
            for b in self.service.registry
        )
        if not rows:
            rows = '<tr><td colspan="3">No model is loaded yet.</td></tr>'
        return (
            '<table data-testid="models"><tr><th>Model</th><th>Also called</th><th>For</th></tr>'
            f"{rows}</table>"
        )


class StandaloneRootHandler(_PageHeaders):
    def get(self) -> None:
        self.finish(
            _page(
                "Oráculo model service",
                "<p>An OpenAI-compatible API: send requests to <code>v1/…</code> with "
                "<code>Authorization: Bearer &lt;API key&gt;</code>.</p>" + self.models_table(),
            )
        )


class RootHandler(HubOAuthenticated, _PageHeaders):
    """The signed-in person's models, usage and budgets (and, for operators, the dashboard)."""

    @web.authenticated
    async def get(self) -> None:
        user: dict[str, Any] = self.current_user
        scopes = set(user.get("scopes") or ())
        who = Identity(name=user["name"], groups=tuple(user.get("groups") or ()))
        now = time.time()
        since, until = period_start("month", now), period_end("month", now)
        budgets = self.service.budgets
        mine = await asyncio.to_thread(
            summary, self.service.store, budgets.prices, user=who.name, since=since, until=until
        )
        status = await budgets.status(who, now)
        t = mine["totals"]
        usage = (
            '<table data-testid="my-usage"><tr><th>This month</th><th></th></tr>'
            f'<tr><td>Model tokens</td><td class="n" data-unit="tokens">{t["tokens"]:,}</td></tr>'
            f'<tr><td>Kernel CPU seconds</td><td class="n" data-unit="cpu_seconds">'
            f"{t['cpu_seconds']:,.1f}</td></tr>"
            f'<tr><td>Voice seconds</td><td class="n" data-unit="voice_seconds">'
            f"{t['voice_seconds']:,.1f}</td></tr></table>"
        )
        rows = "".join(
            f"<tr><td>{_e(b['period'])}</td><td>{_e(b['unit'])}</td>"
            f'<td class="n">{b["used"]:g} / {b["limit"]:g}</td><td>{_e(b["resets_at"])}</td></tr>'
            for b in status
        )
        budgets_html = (
            '<table data-testid="my-budgets"><tr><th>Budget</th><th>Unit</th><th>Used</th>'
            f"<th>Resets</th></tr>{rows}</table>"
            if rows
            else '<p data-testid="my-budgets">No budget bounds you.</p>'
        )
        operator = ""
        if USAGE_READ_ALL in scopes:
            operator = (
                '<p class="op" data-testid="operator">You may read everyone\'s usage: '
                f'<a href="{DASHBOARD_URL}">open the operator\'s dashboard</a> (users, servers, '
                "usage, budgets, refusals, the model queue).</p>"
            )
        self.finish(
            _page(
                "Oráculo model service",
                f"<p>Signed in as <b>{_e(who.name)}</b>. These are the models you may use, from "
                "your notebooks, chat, agents and voice (programs: <code>v1/…</code> with a hub "
                f"token).</p>{operator}<h2>Models</h2>{self.models_table()}"
                f"<h2>Your usage</h2>{usage}<h2>Your budgets</h2>{budgets_html}"
                '<p>Your Usage panel in JupyterLab charts it over time: <a href="/hub/home">'
                "back to the hub</a>.</p>",
            )
        )


def root_routes(prefix: str, service: ModelService) -> list[Any]:
    """The root page: with hub OAuth under the hub, a plain one standalone."""
    kw = {"service": service}
    if not isinstance(service.auth, HubAuthenticator):
        return [(prefix, StandaloneRootHandler, kw)]
    HubOAuth.instance(cache_max_age=60)
    return [(prefix, RootHandler, kw), (rf"{prefix}oauth_callback", HubOAuthCallbackHandler)]
