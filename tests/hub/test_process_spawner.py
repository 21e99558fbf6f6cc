"""The process spawner's start, with real processes: it returns once the server listens (the
hub's own check then finds it at once instead of on an exponential backoff), and at once when
the server dies on the way up."""

from __future__ import annotations

import socket
import sys
import time
from pathlib import Path

from jupyterhub.objects import Hub
from traitlets.config import Config

from oraculo.hub.spawners import OraculoProcessSpawner
from tests.hub.fakes import HubUser

#: A stand-in server: listens on the port the spawner chose, after a second of "start-up".
SLOW_SERVER = """
import os, socket, time
time.sleep(1.0)
s = socket.socket()
s.bind(("127.0.0.1", int(os.environ["JUPYTERHUB_SERVICE_URL"].rsplit(":", 1)[1].split("/")[0])))
s.listen()
time.sleep(60)
"""


def spawner(tmp_path: Path, code: str) -> OraculoProcessSpawner:
    config = Config()
    config.OraculoProcessSpawner.home_dir_template = str(tmp_path / "{username}")
    config.GroupFolders.enabled = False
    user = HubUser("ada")
    s = OraculoProcessSpawner(
        user=user,
        hub=Hub(ip="127.0.0.1", port=8081, base_url="/hub/"),
        config=config,
        api_token="token-ada",
        oauth_client_id="jupyterhub-user-ada",
        server=user.server,
        cmd=[sys.executable, "-c", code],
        args=[],
    )
    return s


async def test_start_returns_once_the_server_listens(tmp_path: Path) -> None:
    s = spawner(tmp_path, SLOW_SERVER)
    try:
        ip, port = await s.start()
        # no retry needed: the port takes connections the moment start returns
        socket.create_connection((ip, port), timeout=1).close()
    finally:
        await s.stop(now=True)


async def test_start_returns_when_the_server_dies_on_the_way_up(tmp_path: Path) -> None:
    s = spawner(tmp_path, "raise SystemExit(3)")
    t0 = time.monotonic()
    await s.start()
    assert time.monotonic() - t0 < 20  # it did not sit out the 30 s listening bound
    assert await s.poll() == 3
