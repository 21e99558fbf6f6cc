"""The operator's dashboard: a JupyterHub service (``/services/usage-dashboard/``).

People sign in with hub OAuth. The hub lets only those with the access scope of this service
start that (admins, and the ``oraculo-admin`` role); the page then also needs the usage read-all
scope (``custom:oraculo:usage:read-all``) in the token the hub issued, and every read and every
action (stop a server, set or remove a budget) is made with that same token, so the hub and the
model service check each one as they would the viewer's own request.
"""

from __future__ import annotations

import asyncio
import os
import secrets
import signal
import time
from typing import Any
from urllib.parse import quote, urlencode

from jupyterhub.services.auth import HubOAuth, HubOAuthCallbackHandler, HubOAuthenticated
from pydantic import BaseModel, ConfigDict, Field, ValidationError
from tornado import httpserver, web
from traitlets import Int, Unicode, default
from traitlets.config import Application

from . import render
from .data import (
    PERIODS,
    UNITS,
    Throughput,
    UpstreamError,
    Upstreams,
    gpu_memory,
    parse_metrics,
    servers,
    shape,
)

USAGE_READ_ALL = "custom:oraculo:usage:read-all"
BUDGETS_WRITE = "custom:oraculo:budgets:write"


#: What an action's redirect may say: ``?done=<code>``, shown as its fixed sentence.
MESSAGES: dict[str, tuple[str, str]] = {
    "stopping": ("good", "Stopping the server."),
    "stop-unnamed": ("bad", "Say whose server to stop."),
    "stop-failed": ("bad", "The hub refused to stop that server (the dashboard's log says why)."),
    "budget-set": ("good", "Budget set; it applies at once (see Budgets)."),
    "budget-removed": ("good", "Budget removed."),
    "budget-invalid": (
        "bad",
        "Not a budget: give a user or group name, day or month, a unit and a limit of 0 or more.",
    ),
    "budget-refused": (
        "bad",
        "The model service refused that budget (the dashboard's log says why).",
    ),
    "budget-forbidden": (
        "bad",
        f"The model service refused: changing budgets needs {BUDGETS_WRITE}.",
    ),
}


class BudgetForm(BaseModel):
    model_config = ConfigDict(extra="ignore")

    scope: str = Field(pattern=r"^(user|group)$")
    name: str = Field(min_length=1, max_length=255)
    period: str = Field(pattern=r"^(day|month)$")
    unit: str = Field(pattern=r"^(tokens|cpu_seconds|gpu_seconds|voice_seconds|cost)$")
    limit: float = Field(ge=0)


class DashboardBase(HubOAuthenticated, web.RequestHandler):
    """Hub OAuth, the usage read-all scope, and the viewer's token for every upstream call."""

    def initialize(self, app: DashboardApp) -> None:
        self.app = app

    def set_default_headers(self) -> None:
        self.set_header("X-Content-Type-Options", "nosniff")
        self.set_header("Cache-Control", "no-store")
        self.set_header("Referrer-Policy", "same-origin")
        self.set_header("X-Frame-Options", "DENY")
        self.set_header(
            "Content-Security-Policy",
            "default-src 'none'; style-src 'unsafe-inline'; img-src 'self' data:; "
            "form-action 'self'; frame-ancestors 'none'; base-uri 'none'",
        )

    def viewer(self) -> dict[str, Any] | None:
        """The signed-in viewer's hub model, or None after a 403 page was written."""
        user: dict[str, Any] = self.current_user  # @web.authenticated ran first
        if USAGE_READ_ALL not in set(user.get("scopes") or ()):
            self.set_status(403)
            self.finish(
                render.forbidden(
                    user["name"],
                    "the operator's dashboard needs the usage read-all scope "
                    f"({USAGE_READ_ALL}); ask a hub admin.",
                )
            )
            return None
        return user

    def upstreams(self) -> Upstreams:
        token = self.hub_auth.get_token(self)
        assert token, "an authenticated viewer has a token"
        return Upstreams(self.app.hub_api_url, self.app.models_url, token)

    def back(self, code: str) -> None:
        """Back to the page (303), with what happened as one of :data:`MESSAGES`' codes (never
        text: a link someone crafts can show an operator only these fixed sentences)."""
        assert code in MESSAGES, code
        self.redirect(f"{self.app.base_url}?{urlencode({'done': code})}", status=303)

    def write_error(self, status_code: int, **kwargs: Any) -> None:
        exc = kwargs.get("exc_info", (None, None, None))[1]
        why = exc.log_message if isinstance(exc, web.HTTPError) and exc.log_message else None
        self.set_header("Content-Type", "text/html; charset=UTF-8")
        self.finish(render.forbidden("", why or self._reason))


class DashboardHandler(DashboardBase):
    @web.authenticated
    async def get(self) -> None:
        user = self.viewer()
        if user is None:
            return
        period = self.get_argument("period", "week")
        if period not in PERIODS:
            raise web.HTTPError(400, "period must be day, week or month")
        try:
            raw = await self.upstreams().gather(period)
        except UpstreamError as e:
            self.set_status(502 if e.status >= 500 else e.status)
            self.finish(render.forbidden(user["name"], f"an upstream refused: {e}"))
            return
        gpus = await asyncio.to_thread(gpu_memory)
        since = raw.now - PERIODS[period] * 86400
        shaped = shape(raw.daily, since, raw.now, raw.budgets)
        members = {g["name"]: len(g.get("users") or []) for g in raw.groups}
        group_rows = [{**r, "members": members.get(r["group"], "")} for r in shaped.groups]
        known = {r["group"] for r in group_rows}
        group_rows += [{"group": g, "members": n} for g, n in members.items() if g not in known]
        metrics = parse_metrics(raw.metrics)
        throughput = self.app.throughput.update(metrics.tokens, time.time())
        message = MESSAGES.get(self.get_argument("done", ""))
        testids = {
            "tokens_by_model": "chart-tokens",
            "cost_by_user": "chart-cost",
            "cpu_by_user": "chart-cpu",
            "voice_by_group": "chart-voice",
        }
        self.set_header("Content-Type", "text/html; charset=UTF-8")
        self.finish(
            render.page(
                viewer=user["name"],
                base=self.app.base_url,
                period=period,
                xsrf=self.xsrf_form_html(),
                flash=message,
                totals=shaped.totals,
                charts={
                    name: render.stacked_bars(wide, unit, testids[name])
                    for name, (wide, unit) in shaped.charts.items()
                },
                users=users_table(raw.users, shaped.users),
                groups=group_rows,
                models=shaped.models,
                servers=servers(raw),
                budgets=shaped.budgets,
                refusals=raw.daily.get("refusals") or [],
                metrics=metrics,
                throughput=throughput,
                gpus=gpus,
                since=render.utc(since),
            )
        )


def users_table(
    hub_users: list[dict[str, Any]], spent: list[dict[str, Any]]
) -> list[dict[str, Any]]:
    """Every hub user (admin or not, their groups) with their use, top spenders first."""
    info = {u["name"]: u for u in hub_users}
    rows = []
    for r in spent:
        u = info.pop(r["user"], {})
        rows.append({**r, "admin": "yes" if u.get("admin") else "", "groups": _groups(u)})
    for name, u in sorted(info.items()):
        zero = dict.fromkeys(("requests", *UNITS), 0)
        rows.append(
            {"user": name, **zero, "admin": "yes" if u.get("admin") else "", "groups": _groups(u)}
        )
    return rows


def _groups(u: dict[str, Any]) -> str:
    return ", ".join(sorted(u.get("groups") or []))


class StopServerHandler(DashboardBase):
    @web.authenticated
    async def post(self) -> None:
        if self.viewer() is None:
            return
        name = self.get_argument("user", "")
        if not name:
            self.back("stop-unnamed")
            return
        try:
            await self.upstreams().stop_server(quote(name, safe=""))
        except UpstreamError as e:
            self.app.log.warning("could not stop %r's server: %s %s", name, e.status, e)
            self.back("stop-failed")
            return
        self.app.log.info("%s stopped %s's server", self.current_user["name"], name)
        self.back("stopping")


class BudgetActionHandler(DashboardBase):
    @web.authenticated
    async def post(self, action: str | None = None) -> None:
        if self.viewer() is None:
            return
        fields = {k: self.get_argument(k, "") for k in ("scope", "name", "period", "unit")}
        up = self.upstreams()
        try:
            if action == "delete":
                await up.delete_budget(fields)
                self.app.log.info("%s removed budget %s", self.current_user["name"], fields)
                self.back("budget-removed")
                return
            try:
                form = BudgetForm.model_validate({**fields, "limit": self.get_argument("limit")})
            except (ValidationError, web.MissingArgumentError) as e:
                self.app.log.info("not a budget: %s", str(e).splitlines()[0])
                self.back("budget-invalid")
                return
            await up.put_budget(form.model_dump())
        except UpstreamError as e:
            self.app.log.warning("the model service refused a budget: %s %s", e.status, e)
            self.back("budget-forbidden" if e.status == 403 else "budget-refused")
            return
        self.app.log.info("%s set budget %s", self.current_user["name"], form.model_dump())
        self.back("budget-set")


class DashboardApp(Application):
    """``python -m oraculo.hub.dashboard``: the operator's dashboard as a hub service."""

    name = "oraculo-dashboard"
    ip = Unicode("127.0.0.1", config=True, help="Address to listen on.")
    port = Int(config=True, help="Port. Default: the port of $JUPYTERHUB_SERVICE_URL, else 8003.")
    base_url = Unicode(config=True, help="URL prefix. Default: $JUPYTERHUB_SERVICE_PREFIX.")
    hub_api_url = Unicode(config=True, help="The hub's REST API. Default: $JUPYTERHUB_API_URL.")
    models_url = Unicode(
        config=True,
        help="""The model service, with its prefix (e.g.
        http://127.0.0.1:8002/services/models/). Default: $ORACULO_MODELS_API_URL.""",
    )

    @default("port")
    def _default_port(self) -> int:
        url = os.environ.get("JUPYTERHUB_SERVICE_URL", "")
        return int(url.rsplit(":", 1)[1].split("/")[0]) if url.count(":") >= 2 else 8003

    @default("base_url")
    def _default_base_url(self) -> str:
        return os.environ.get("JUPYTERHUB_SERVICE_PREFIX", "/services/usage-dashboard/")

    @default("hub_api_url")
    def _default_hub_api_url(self) -> str:
        return os.environ.get("JUPYTERHUB_API_URL", "http://127.0.0.1:8081/hub/api").rstrip("/")

    @default("models_url")
    def _default_models_url(self) -> str:
        return os.environ.get("ORACULO_MODELS_API_URL", "http://127.0.0.1:8002/services/models/")

    def make_app(self) -> web.Application:
        self.throughput = Throughput()
        self.hub_api_url = self.hub_api_url.rstrip("/") + "/"
        # the handlers and the OAuth callback share HubOAuth's one instance
        self.hub_auth = HubOAuth.instance(parent=self, cache_max_age=60)
        kw = {"app": self}
        prefix = self.base_url
        return web.Application(
            [
                (prefix, DashboardHandler, kw),
                (prefix + "servers/stop", StopServerHandler, kw),
                (prefix + "budgets", BudgetActionHandler, kw),
                (prefix + "budgets/(delete)", BudgetActionHandler, kw),
                (prefix + "oauth_callback", HubOAuthCallbackHandler),
            ],
            # sessions last as long as this process: a restart signs viewers in again
            cookie_secret=secrets.token_bytes(32),
            xsrf_cookies=True,
        )

    async def serve(self) -> None:
        server = httpserver.HTTPServer(self.make_app(), xheaders=True)
        server.listen(self.port, self.ip)
        self.log.info("operator's dashboard at http://%s:%d%s", self.ip, self.port, self.base_url)
        stop = asyncio.Event()
        asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, stop.set)
        try:
            await stop.wait()
        finally:
            server.stop()

    def start(self) -> None:
        # a hub started in the background ignores SIGINT; its children inherit that: restore it
        signal.signal(signal.SIGINT, signal.default_int_handler)
        try:
            asyncio.run(self.serve())
        except KeyboardInterrupt:
            self.log.info("interrupted")


def main(argv: list[str] | None = None) -> None:
    app = DashboardApp()
    app.initialize(argv)
    app.start()
