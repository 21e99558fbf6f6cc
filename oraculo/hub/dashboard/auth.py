"""Hub OAuth in front of the dashboard's Bokeh server: its page and its websocket.

Bokeh asks an :class:`~bokeh.server.auth_provider.AuthProvider` who is calling on every request,
the websocket upgrade included; :class:`HubOAuthProvider` answers from the hub (the OAuth cookie
this service set, or a token in the ``Authorization`` header) and sends a stranger to the hub's
login. :class:`BoardDocHandler` then refuses, with a 403 page, anyone who is signed in but lacks
the service's access scope or the usage read-all scope, and :class:`BoardWSHandler` refuses the
upgrade (403, before the handshake) unless the caller is signed in with that scope *and* is the
viewer whose page made the Bokeh session the socket names, so a session token copied out of one
operator's page opens nothing for anyone else.

The viewer's hub token never enters the page: :data:`SESSIONS` keeps it on the server, per Bokeh
session, for the board to read and act with, and the session token Bokeh embeds in the page
carries no header and no cookie (see :mod:`.app`).
"""

from __future__ import annotations

import contextvars
import dataclasses
import html
from typing import Any
from urllib.parse import urlsplit

from bokeh.server.auth_provider import AuthProvider
from bokeh.util.token import get_session_id
from jupyterhub.services.auth import HubOAuth
from panel.io.server import DocHandler, WSHandler
from tornado.httputil import url_concat
from tornado.web import HTTPError, RequestHandler

USAGE_READ_ALL = "custom:oraculo:usage:read-all"


@dataclasses.dataclass(frozen=True)
class Viewer:
    """Who looks at one Bokeh session of the board, and the hub token they signed in with."""

    name: str
    token: str = dataclasses.field(repr=False)


class Sessions:
    """The viewer of each live Bokeh session (by session id), kept in this process only."""

    def __init__(self) -> None:
        self._viewers: dict[str, Viewer] = {}

    def claim(self, session_id: str, viewer: Viewer) -> None:
        self._viewers.setdefault(session_id, viewer)

    def owner(self, session_id: str) -> Viewer | None:
        return self._viewers.get(session_id)

    def release(self, session_id: str) -> None:
        self._viewers.pop(session_id, None)

    def __len__(self) -> int:
        return len(self._viewers)


SESSIONS = Sessions()

#: The viewer whose page request is creating a session (read by the board as it is built).
_CREATING: contextvars.ContextVar[Viewer | None] = contextvars.ContextVar("viewer", default=None)


def creating_viewer() -> Viewer | None:
    """The viewer of the page request now building a board; None outside one."""
    return _CREATING.get()


def allowed(user: Any) -> bool:
    """Whether a hub model (as :class:`HubOAuthProvider` returns it) may open the board."""
    return isinstance(user, dict) and bool(user.get("oraculo_allowed"))


class HubOAuthProvider(AuthProvider):
    """Bokeh's authentication hooks answered by JupyterHub (``HubOAuth``)."""

    def __init__(self, hub_auth: HubOAuth) -> None:
        self.hub_auth = hub_auth
        super().__init__()

    @property
    def get_user_async(self) -> Any:
        return self._user

    @property
    def get_login_url(self) -> Any:
        return self._login_url

    async def _user(self, handler: RequestHandler) -> dict[str, Any] | None:
        model = await self.hub_auth.get_user(handler, sync=False)
        if not model or model.get("kind", "user") != "user":
            return None
        scopes = set(model.get("scopes") or ())
        access = self.hub_auth.check_scopes(self.hub_auth.access_scopes, model)
        ok = bool(access or not self.hub_auth.access_scopes) and USAGE_READ_ALL in scopes
        return {**model, "oraculo_allowed": ok}

    def _login_url(self, handler: RequestHandler) -> str:
        """The hub's authorize URL, with a state cookie that brings the viewer back here."""
        hub_auth = self.hub_auth
        params: dict[str, str] = {}
        code_verifier = None
        if hub_auth.pkce_enabled:
            code_verifier, challenge, method = hub_auth.generate_pkce_code_challenge()
            params.update(code_challenge=challenge, code_challenge_method=method)
        params["state"] = hub_auth.set_state_cookie(
            handler, next_url=handler.request.uri, code_verifier=code_verifier
        )
        return str(url_concat(hub_auth.login_url, params))


def _security_headers(handler: RequestHandler) -> None:
    handler.set_header("X-Content-Type-Options", "nosniff")
    handler.set_header("Referrer-Policy", "same-origin")
    handler.set_header("X-Frame-Options", "DENY")
    handler.set_header("Content-Security-Policy", "frame-ancestors 'none'; base-uri 'none'")


def forbidden_page(viewer: str, why: str) -> str:
    e = html.escape
    return f"""<!doctype html><html lang="en"><head><meta charset="utf-8">
<title>Not allowed</title></head>
<body data-testid="dashboard-forbidden" style="font-family:system-ui,sans-serif;margin:32px">
<h1>Oráculo — operator's dashboard</h1><h2>403: not allowed</h2><p>{e(viewer)}: {e(why)}</p>
<p><a href="/hub/home">Back to the hub</a></p></body></html>"""


class BoardDocHandler(DocHandler):
    """The board's page: signed-in operators only; each page makes a session of its own."""

    def set_default_headers(self) -> None:
        super().set_default_headers()
        _security_headers(self)
        self.set_header("Cache-Control", "no-store")

    def get_login_url(self) -> str:
        # the hub's own URL (Panel's handler would make it relative to this server's prefix)
        provider = self.application.auth_provider
        assert isinstance(provider, HubOAuthProvider)
        return provider._login_url(self)

    async def get(self, *args: Any, **kwargs: Any) -> None:
        user = self.current_user
        if user is not None and not allowed(user):
            self.set_status(403)
            self.set_header("Content-Type", "text/html; charset=UTF-8")
            self.finish(
                forbidden_page(
                    user.get("name", ""),
                    "the operator's dashboard needs the usage read-all scope "
                    f"({USAGE_READ_ALL}); ask a hub admin.",
                )
            )
            return
        # no user: @authenticated sends them to the hub (and returns no coroutine)
        pending = super().get(*args, **kwargs)
        if pending is not None:
            await pending

    async def get_session(self) -> Any:
        user = self.current_user
        if not allowed(user):
            raise HTTPError(403)
        if "bokeh-session-id" in self.request.arguments or "bokeh-token" in self.request.arguments:
            raise HTTPError(403, "a page makes its own session")
        provider = self.application.auth_provider
        assert isinstance(provider, HubOAuthProvider)
        token = provider.hub_auth.get_token(self)
        if not token:
            raise HTTPError(403)
        reset = _CREATING.set(Viewer(user["name"], token))
        try:
            session = await super().get_session()  # type: ignore[misc]
        finally:
            _CREATING.reset(reset)
        owner = SESSIONS.owner(session.id)
        if owner is None or owner.name != user["name"]:
            raise HTTPError(403)
        return session


class BoardWSHandler(WSHandler):
    """The board's websocket: refused before the upgrade unless the caller is signed in as an
    operator and is the viewer of the session its token names."""

    def check_origin(self, origin: str) -> bool:
        # a page of this site only (as jupyter_server): the Origin's host is the Host asked for
        return urlsplit(origin).netloc.lower() == self.request.host.lower()

    async def prepare(self) -> None:
        await super().prepare()  # no user: 403 already
        if self._finished:
            return
        user = self.current_user
        offered = self.request.headers.get("Sec-WebSocket-Protocol", "").split(",")
        offered = [p.strip() for p in offered]
        owner = None
        if len(offered) == 2 and offered[0] == "bokeh":
            try:
                owner = SESSIONS.owner(get_session_id(offered[1]))
            except Exception:  # not a Bokeh token at all
                owner = None
        if not allowed(user) or owner is None or owner.name != user["name"]:
            self.set_status(403)
            self.finish()
