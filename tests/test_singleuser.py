"""The single-user launcher's own pieces (the launcher as a whole runs in every e2e test)."""

from __future__ import annotations

import asyncio
import os
import stat
import subprocess
import sys
import textwrap
import time
from pathlib import Path

from oraculo.kernels import credentials
from oraculo.singleuser import _panel_token, private_folder
from tests.harness import HubClient, HubProcess, new_user


def test_our_folder_is_made_private_or_tightened(tmp_path: Path) -> None:
    fresh = tmp_path / "fresh" / ".oraculo"
    private_folder(str(fresh))
    assert stat.S_IMODE(fresh.stat().st_mode) == 0o700

    old = tmp_path / "old"
    old.mkdir(mode=0o755)
    os.chmod(old, 0o755)  # as os.makedirs left it under the usual umask
    private_folder(str(old))
    assert stat.S_IMODE(old.stat().st_mode) == 0o700


def test_the_server_leaves_the_hubs_database_code_out_and_the_hub_modules_still_work(
    tmp_path: Path,
) -> None:
    """What ``python -m oraculo.singleuser`` imports, in its order, in a fresh interpreter."""
    code = """
        import logging, sys
        from oraculo.singleuser import keep_hub_code_out
        keep_hub_code_out()
        import jupyterlab.labapp
        from jupyterhub.singleuser.extension import JupyterHubSingleUser
        import oraculo.kernels.authorizer, oraculo.extensions.app
        from oraculo.kernels.specs import SandboxKernelSpecManager
        print(sorted(SandboxKernelSpecManager().find_kernel_specs())[:1])
        heavy = ("alembic", "sqlalchemy.orm", "jupyterhub.handlers", "jupyterhub.objects",
                 "rich", "click", "IPython", "ipykernel")
        print(sorted(m for m in heavy if m in sys.modules))
        print(type(sys.modules["jupyterhub.orm"]).__name__)

        # the access log still logs the server's requests, a static file's at debug level
        import asyncio, os
        from jupyterhub.log import log_request
        from tornado.httpclient import AsyncHTTPClient
        from tornado.httpserver import HTTPServer
        from tornado.web import Application, RequestHandler, StaticFileHandler
        from tornado.testing import bind_unused_port

        class Status(RequestHandler):
            def get(self):
                self.write("ok")

        records = []
        logging.getLogger("tornado.access").addHandler(logging.Handler())
        logging.getLogger("tornado.access").handlers[-1].emit = records.append
        logging.getLogger("tornado.access").setLevel(logging.DEBUG)
        open("a.txt", "w").write("a")

        async def serve():
            app = Application(
                [("/user/ada/api/status", Status),
                 ("/static/(.*)", StaticFileHandler, {"path": os.getcwd()})],
                log_function=log_request,
            )
            sock, port = bind_unused_port()  # 127.0.0.1
            server = HTTPServer(app)
            server.add_sockets([sock])
            client = AsyncHTTPClient()
            for path in ("/user/ada/api/status", "/static/a.txt"):
                await client.fetch(f"http://127.0.0.1:{port}{path}")
            server.stop()

        asyncio.run(serve())
        print([(r.levelname, *r.getMessage().split()[:3]) for r in records])

        # what imports the hub's modules later gets the real ones, whole
        from jupyterhub.handlers.pages import HealthCheckHandler
        import jupyterhub.log, jupyterhub.orm
        print(issubclass(HealthCheckHandler, RequestHandler),
              HealthCheckHandler is jupyterhub.log.HealthCheckHandler)
        print(jupyterhub.orm.User.__tablename__, "sqlalchemy.orm" in sys.modules)
    """
    out = subprocess.run(
        [sys.executable, "-c", textwrap.dedent(code)],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert out.returncode == 0, out.stderr[-3000:]
    assert out.stdout.splitlines() == [
        "['oraculo']",
        "[]",
        "_LazyModule",
        "[('INFO', '200', 'GET', '/user/ada/api/status'),"
        " ('DEBUG', '200', 'GET', '/static/a.txt')]",
        "True False",
        "users True",
    ]


class SlowHub:
    """A TCP relay to the hub that answers nothing on the connections made in its first
    ``slow_for`` seconds (a hub too busy to answer, as with a crowd of servers starting), then
    relays every connection to the real hub."""

    def __init__(self, hub: HubProcess, slow_for: float) -> None:
        self.hub_port = hub.port
        self.slow_for = slow_for
        self.held = self.relayed = 0

    async def start(self) -> SlowHub:
        self.server = await asyncio.start_server(self._connection, "127.0.0.1", 0)
        self.port = self.server.sockets[0].getsockname()[1]
        self.answers_at = time.monotonic() + self.slow_for
        return self

    async def _connection(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        if time.monotonic() < self.answers_at:
            self.held += 1
            await reader.read()  # until the client gives up and closes
            writer.close()
            return
        self.relayed += 1
        up_reader, up_writer = await asyncio.open_connection("127.0.0.1", self.hub_port)

        async def pipe(r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
            try:
                while data := await r.read(65536):
                    w.write(data)
                    await w.drain()
            finally:
                w.close()

        await asyncio.gather(
            pipe(reader, up_writer), pipe(up_reader, writer), return_exceptions=True
        )


async def test_the_panel_token_is_minted_once_a_slow_hub_answers(
    hub: HubProcess, hub_client: HubClient
) -> None:
    user = await new_user(hub_client)
    slow = await SlowHub(hub, slow_for=2.5).start()
    tokens = credentials.HubTokens(
        f"http://127.0.0.1:{slow.port}/hub/api", user.token, user.name, timeout=1.0
    )
    credentials.minting_panel_token()
    try:
        await asyncio.wait_for(
            asyncio.to_thread(_panel_token, tokens, time.time(), (0.5,) * 10), 60
        )
        token = credentials.panel_token(wait=0)
        assert token is not None
        assert slow.held >= 1 and slow.relayed >= 1  # it failed first, then tried again

        # the hub holds one panel token for the user, and it works
        r = await user.api("GET", f"/hub/api/users/{user.name}/tokens")
        notes = [t["note"] for t in r.json()["api_tokens"]]
        assert notes.count("oraculo panel") == 1
        r = await user.api(
            "GET", "/hub/api/user", headers={"Authorization": f"token {token.token}"}
        )
        assert r.status_code == 200 and r.json()["name"] == user.name
    finally:
        slow.server.close()
        credentials.hold_panel_token(None)


async def test_a_refused_panel_token_is_not_asked_for_again(
    hub: HubProcess, hub_client: HubClient
) -> None:
    user = await new_user(hub_client)
    tokens = credentials.HubTokens(f"{hub.url}/hub/api", "not-a-token", user.name)
    credentials.minting_panel_token()
    try:
        # a 403 ends it at once: with a minute between tries, a retry would overrun the limit
        await asyncio.wait_for(asyncio.to_thread(_panel_token, tokens, time.time(), (60.0,)), 30)
        assert credentials.panel_token(wait=0) is None
    finally:
        credentials.hold_panel_token(None)
