"""The single-user launcher's own pieces (the launcher as a whole runs in every e2e test)."""

from __future__ import annotations

import os
import stat
import subprocess
import sys
import textwrap
from pathlib import Path

from oraculo.singleuser import private_folder


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
