"""The operator's dashboard: a JupyterHub service (``/services/usage-dashboard/``), a Panel app.

This process is a Bokeh server (Panel's ``get_server``) behind hub OAuth (:mod:`.auth`): the hub
lets only those with the access scope of this service sign in to it (admins, through the
``oraculo-admin`` role); the page and its websocket also need the usage read-all scope
(``custom:oraculo:usage:read-all``) in the token the hub issued, and every read and every action
(stop a server, set or remove a budget) is made with that same token (:mod:`.board`), so the hub
and the model service check each one as they would the viewer's own request. The service holds
no credential of its own. Every script and style sheet comes from this server, never a CDN.
"""

from __future__ import annotations

import asyncio
import os
import secrets
import signal
from typing import Any

from bokeh.server.urls import per_app_patterns
from jupyterhub.services.auth import HubOAuth, HubOAuthCallbackHandler
from panel.io.server import DocHandler, WSHandler, get_server
from traitlets import Int, Unicode, default
from traitlets.config import Application

from .auth import BoardDocHandler, BoardWSHandler, HubOAuthProvider, creating_viewer
from .board import create_board
from .data import Throughput


def _install_handlers() -> None:
    """Bokeh's per-app routes with the board's page and websocket handlers, and without
    ``autoload.js`` (which would make sessions outside a signed-in page)."""
    routes = []
    for route in per_app_patterns:
        pattern, handler = route[0], route[1]
        if pattern == r"/autoload.js":
            continue
        if handler is DocHandler:
            handler = BoardDocHandler
        elif handler is WSHandler:
            handler = BoardWSHandler
        routes.append((pattern, handler, *route[2:]))
    per_app_patterns[:] = routes


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

    def make_server(self) -> Any:
        """The Bokeh server, on the running event loop (not started)."""
        # every script and style sheet from this server (the hub may be offline)
        os.environ["BOKEH_RESOURCES"] = "server"
        os.environ["BOKEH_MINIFIED"] = "true"
        _install_handlers()
        hub_auth = HubOAuth.instance(parent=self, cache_max_age=60)
        throughput = Throughput()
        hub_api = self.hub_api_url.rstrip("/") + "/"
        models = self.models_url

        def board() -> Any:
            return create_board(creating_viewer(), hub_api, models, throughput)

        return get_server(
            {"/": board},
            port=self.port,
            address=self.ip,
            prefix=self.base_url,
            title="Operator's dashboard · Oráculo",
            extra_patterns=[(r"/oauth_callback", HubOAuthCallbackHandler)],
            auth_provider=HubOAuthProvider(hub_auth),
            # sessions and sign-ins last as long as this process: a restart signs viewers in again
            cookie_secret=secrets.token_hex(32),
            secret_key=secrets.token_urlsafe(32),
            sign_sessions=True,
            # the session token Bokeh puts in the page carries no header and no cookie (the hub
            # OAuth cookie and any Authorization header stay out of reach of page scripts)
            include_headers=[],
            include_cookies=[],
            # the board's websocket handler checks the Origin against the Host itself
            websocket_origin="*",
            http_server_kwargs={"xheaders": True},
        )

    async def serve(self) -> None:
        server = self.make_server()
        server.start()
        self.log.info("operator's dashboard at http://%s:%d%s", self.ip, self.port, self.base_url)
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        # the hub stops a service with SIGINT, then SIGTERM (in place of Panel's SIGINT handler,
        # which stops the loop under asyncio.run)
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, stop.set)
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
