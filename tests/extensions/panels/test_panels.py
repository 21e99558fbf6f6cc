"""The panels: one ``panel serve`` behind jupyter-server-proxy in a real ``jupyter server``.

The server runs with the package's own configuration (the oraculo extension and
jupyter-server-proxy enabled, Panel's server extension disabled) and token auth, on a free
127.0.0.1 port. Every request goes through the server, as a browser's would.
"""

from __future__ import annotations

import json
import os
import re
import secrets
import stat
import subprocess
import sys
from collections.abc import AsyncIterator
from dataclasses import dataclass
from importlib.metadata import entry_points
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

import httpx
import psutil
import pytest
import websockets
from bokeh.util.token import get_token_payload
from websockets.asyncio.client import connect as ws_connect
from websockets.typing import Origin, Subprotocol

from oraculo.extensions.panels import proxy
from oraculo.extensions.panels.workspace import render_status
from tests.harness import CHROMIUM_ARGS, free_port, wait_for

OWNER = "panelowner"
WORKSPACE = f"/{proxy.PROXY_NAME}/workspace"


@dataclass
class JupyterServer:
    proc: subprocess.Popen[bytes]
    port: int
    token: str
    log_path: Path

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def auth(self) -> dict[str, str]:
        return {"Authorization": f"token {self.token}"}

    def log_tail(self) -> str:
        return self.log_path.read_text(errors="replace")[-4000:]


@pytest.fixture(scope="module")
async def jupyter_server(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[JupyterServer]:
    tmp = tmp_path_factory.mktemp("panels")
    (tmp / "root").mkdir()
    port, token = free_port(), secrets.token_hex(24)
    env = {k: v for k, v in os.environ.items() if not k.startswith(("JUPYTERHUB_", "JUPYTER_"))}
    env.pop("ORACULO_MODELS_URL", None)
    env.update(
        {
            "USER": OWNER,
            # The package's configuration (in the venv) only, not this machine's ~/.jupyter.
            "JUPYTER_CONFIG_DIR": str(tmp / "config"),
            "JUPYTER_RUNTIME_DIR": str(tmp / "runtime"),
            "JUPYTER_DATA_DIR": str(tmp / "data"),
        }
    )
    log_path = tmp / "server.log"
    cmd = [
        str(Path(sys.executable).parent / "jupyter-server"),
        "--ServerApp.ip=127.0.0.1",
        f"--ServerApp.port={port}",
        "--ServerApp.port_retries=0",
        "--ServerApp.open_browser=False",
        "--ServerApp.allow_root=True",
        f"--ServerApp.root_dir={tmp / 'root'}",
        f"--IdentityProvider.token={token}",
    ]
    with log_path.open("wb") as log:
        proc = subprocess.Popen(cmd, env=env, stdout=log, stderr=subprocess.STDOUT, cwd=tmp)
    server = JupyterServer(proc, port, token, log_path)

    async def ready() -> bool:
        assert proc.poll() is None, f"jupyter server exited:\n{server.log_tail()}"
        async with httpx.AsyncClient() as c:
            r = await c.get(f"{server.url}/api/status", headers=server.auth)
        return r.status_code == 200

    try:
        await wait_for(ready, 60, "the jupyter server")
        yield server
    finally:
        proc.terminate()
        try:
            proc.wait(15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


@pytest.fixture(scope="module")
async def client(jupyter_server: JupyterServer) -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(base_url=jupyter_server.url, timeout=90) as c:
        yield c


@pytest.fixture(scope="module")
async def page_html(jupyter_server: JupyterServer, client: httpx.AsyncClient) -> str:
    """The Workspace page, fetched with the token (this starts ``panel serve``)."""
    r = await client.get(WORKSPACE, headers=jupyter_server.auth)
    assert r.status_code == 200, f"{r.status_code} {r.text[:500]}\n{jupyter_server.log_tail()}"
    return r.text


async def login_cookies(server: JupyterServer) -> httpx.Cookies:
    """Sign in through the login form, as a browser does; returns the session cookies."""
    async with httpx.AsyncClient(base_url=server.url) as c:
        await c.get("/login")
        r = await c.post("/login", data={"password": server.token, "_xsrf": c.cookies["_xsrf"]})
        assert r.status_code == 302, r.text
        return c.cookies


def bokeh_token(html: str) -> str:
    match = re.search(r'"token":\s*"([^"]+)"', html)
    assert match, "no Bokeh session token in the page"
    return match.group(1)


def ws_url(server: JupyterServer) -> str:
    return f"ws://127.0.0.1:{server.port}{WORKSPACE}/ws"


def panel_processes(server: JupyterServer) -> list[psutil.Process]:
    return [
        p
        for p in psutil.Process(server.proc.pid).children(recursive=True)
        if "oraculo.extensions.panels.serve" in p.cmdline()
    ]


# --- configuration ----------------------------------------------------------------------------


def test_entry_point_registers_the_panel_server() -> None:
    eps = entry_points(group="jupyter_serverproxy_servers")
    (ep,) = [ep for ep in eps if ep.name == proxy.PROXY_NAME]
    config = ep.load()()
    folder = Path(config["unix_socket"]).parent
    assert stat.S_IMODE(folder.stat().st_mode) == 0o700
    assert config["absolute_url"] is True
    launcher = config["launcher_entry"]
    assert launcher["title"] == "Workspace"
    assert launcher["path_info"] == "oraculo-panels/workspace"
    assert Path(launcher["icon_path"]).read_text().lstrip().startswith("<svg")
    cmd = config["command"]("/tmp/x/socket", "/user/alice/")
    assert cmd[cmd.index("--prefix") + 1] == "/user/alice/oraculo-panels"
    assert cmd[cmd.index("--unix-socket") + 1] == "/tmp/x/socket"
    assert "--port" not in cmd and "--address" not in cmd


def test_render_status_escapes_everything() -> None:
    body = render_status(
        {
            "user": "<script>x</script>",
            "version": "0",
            "kernels": [{"id": "k", "name": "<b>", "execution_state": "idle"}],
            "gpu": {"devices": []},
            "model_service": {"configured": True, "ok": False, "detail": "<i>"},
        }
    )
    assert "<script>" not in body and "<b>" not in body and "<i>" not in body
    assert 'data-state="ok"' in body and "none — CPU" in body and "not answering" in body


# --- authentication ---------------------------------------------------------------------------


async def test_unauthenticated_http_is_refused(
    jupyter_server: JupyterServer, client: httpx.AsyncClient
) -> None:
    for path in (WORKSPACE, f"/{proxy.PROXY_NAME}/", f"/{proxy.PROXY_NAME}/static/js/bokeh.min.js"):
        r = await client.get(path)
        assert r.status_code == 302, (path, r.status_code)
        assert urlparse(r.headers["Location"]).path == "/login"
        r = await client.get(path, headers={"Authorization": "token not-the-token"})
        assert r.status_code in (302, 403), (path, r.status_code)


async def test_page_renders_with_token_and_holds_no_credentials(
    jupyter_server: JupyterServer, page_html: str
) -> None:
    assert "<title>Workspace · Oráculo</title>" in page_html
    # Every script and style sheet comes from this server, under the proxy's prefix.
    for url in re.findall(r'(?:src|href)="([^"]*)"', page_html):
        assert "://" not in url and not url.startswith("//"), url
    # Bokeh copies request headers and cookies into the session token it puts in the page;
    # the proxy strips the credentials before they reach Panel.
    assert jupyter_server.token not in page_html
    payload = get_token_payload(bokeh_token(page_html))
    assert payload["cookies"] == {}
    assert not payload["headers"].get("Authorization")
    assert jupyter_server.token not in json.dumps(payload)


async def test_workspace_assets_are_served(
    jupyter_server: JupyterServer, client: httpx.AsyncClient, page_html: str
) -> None:
    r = await client.get(f"/{proxy.PROXY_NAME}/oraculo/workspace.svg", headers=jupyter_server.auth)
    assert r.status_code == 200 and b"<svg" in r.content


async def test_websocket_needs_credentials_and_same_origin(
    jupyter_server: JupyterServer, page_html: str
) -> None:
    subprotocols = [Subprotocol("bokeh"), Subprotocol(bokeh_token(page_html))]
    url = ws_url(jupyter_server)
    with pytest.raises(websockets.InvalidStatus) as refused:
        async with ws_connect(url, subprotocols=subprotocols, open_timeout=30):
            pass
    assert refused.value.response.status_code == 403

    cookies = await login_cookies(jupyter_server)
    cookie = "; ".join(f"{k}={v}" for k, v in cookies.items())
    origin = Origin("http://evil.example")
    with pytest.raises(websockets.InvalidStatus) as cross_site:
        async with ws_connect(
            url, subprotocols=subprotocols, additional_headers={"Cookie": cookie}, origin=origin
        ):
            pass
    assert cross_site.value.response.status_code == 403

    # The same credentials from the page's own origin get through to Bokeh, which answers.
    async with ws_connect(
        url,
        subprotocols=subprotocols,
        additional_headers={"Cookie": cookie},
        origin=Origin(jupyter_server.url),
        open_timeout=30,
    ) as ws:
        assert ws.subprotocol == "bokeh"
        first = await ws.recv(decode=False)
        assert first


async def test_panel_server_listens_only_on_a_private_unix_socket(
    jupyter_server: JupyterServer, page_html: str
) -> None:
    (panel,) = panel_processes(jupyter_server)
    cmd = panel.cmdline()
    sock = Path(cmd[cmd.index("--unix-socket") + 1])
    assert stat.S_ISSOCK(sock.stat().st_mode)
    folder = sock.parent.stat()
    assert stat.S_IMODE(folder.st_mode) == 0o700
    assert folder.st_uid == os.getuid()
    listening = [c for c in panel.net_connections(kind="inet") if c.status == psutil.CONN_LISTEN]
    assert listening == []


async def test_panel_preview_route_is_not_served(
    jupyter_server: JupyterServer, client: httpx.AsyncClient
) -> None:
    # Panel's own server extension (unauthenticated preview websocket) stays disabled.
    r = await client.get("/panel-preview/render/x.ipynb", headers=jupyter_server.auth)
    assert r.status_code == 404


# --- browser ----------------------------------------------------------------------------------


@pytest.mark.browser
async def test_workspace_in_browser(
    jupyter_server: JupyterServer, client: httpx.AsyncClient, artifacts: Path
) -> None:
    from playwright.async_api import async_playwright, expect

    requests: list[str] = []
    failed: list[str] = []
    bad: list[str] = []
    kernel: dict[str, Any] = {}
    async with async_playwright() as pw:
        browser = await pw.chromium.launch(executable_path="/usr/bin/chromium", args=CHROMIUM_ARGS)
        try:
            page = await browser.new_page(viewport={"width": 1200, "height": 720})
            page.on("request", lambda r: requests.append(r.url))
            page.on("requestfailed", lambda r: failed.append(f"{r.url} {r.failure}"))
            page.on(
                "response", lambda r: bad.append(f"{r.status} {r.url}") if r.status >= 400 else None
            )
            page.on("websocket", lambda ws: requests.append(ws.url))

            await page.goto(f"{jupyter_server.url}/login?next={WORKSPACE}")
            await page.fill("input[name=password]", jupyter_server.token)
            await page.click("#login_submit")
            root = page.locator("[data-testid=oraculo-workspace][data-state=ok]")
            await expect(root).to_be_visible(timeout=60_000)
            await expect(page.get_by_test_id("workspace-user-name")).to_have_text(OWNER)
            await expect(page.get_by_test_id("workspace-gpu")).to_contain_text("none — CPU")
            await expect(page.get_by_test_id("workspace-model-service")).to_contain_text(
                "not configured"
            )
            await expect(page.get_by_test_id("workspace-kernels")).to_contain_text("Kernels (0)")

            # The periodic refresh picks up a new kernel without anyone clicking.
            r = await client.post("/api/kernels", json={}, headers=jupyter_server.auth)
            assert r.status_code == 201, r.text
            kernel = r.json()
            kernels = page.get_by_test_id("workspace-kernels")
            await expect(kernels).to_contain_text("Kernels (1)", timeout=30_000)
            await expect(kernels).to_contain_text(kernel["name"])
            await expect(kernels).to_contain_text(kernel["id"][:8])
            await page.screenshot(path=str(artifacts / "panels-workspace.png"), full_page=True)

            # The Refresh button shows the kernel gone at once.
            r = await client.delete(f"/api/kernels/{kernel['id']}", headers=jupyter_server.auth)
            assert r.status_code == 204, r.text
            kernel = {}
            await page.get_by_role("button", name="Refresh").click()
            await expect(kernels).to_contain_text("Kernels (0)", timeout=4_000)
        finally:
            await browser.close()
            if kernel:
                await client.delete(f"/api/kernels/{kernel['id']}", headers=jupyter_server.auth)

    assert requests
    for url in requests:
        parsed = urlparse(url.removeprefix("blob:"))
        assert parsed.hostname == "127.0.0.1", url
    assert failed == []
    assert bad == []
