"""The Memory panel in a real browser, in a real ``jupyter server`` behind jupyter-server-proxy.

The server is a plain one (token auth) whose memory feature embeds through the session hub's
model service (``models_hub``) with a hub user's token, so every add, edit, search and delete in
the page goes through the real API and real vectors.
"""

from __future__ import annotations

import os
import re
import secrets
import subprocess
import sys
from collections.abc import AsyncIterator
from pathlib import Path
from urllib.parse import urlparse

import httpx
import pytest

from oraculo.extensions.panels import proxy
from oraculo.extensions.panels.memory import render_index_status
from tests.harness import CHROMIUM_ARGS, HubClient, HubProcess, free_port, new_user, wait_for

MEMORY_PAGE = f"/{proxy.PROXY_NAME}/memory"


class Server:
    def __init__(self, proc: subprocess.Popen[bytes], port: int, token: str, log: Path) -> None:
        self.proc, self.port, self.token, self.log = proc, port, token, log

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def auth(self) -> dict[str, str]:
        return {"Authorization": f"token {self.token}"}

    def stop(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(15)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()


async def start_server(tmp: Path, extra_env: dict[str, str]) -> Server:
    """A plain ``jupyter server`` (token auth) whose home and root are ``tmp/home``."""
    root = tmp / "home"
    root.mkdir(exist_ok=True)
    port, token = free_port(), secrets.token_hex(24)
    env = {k: v for k, v in os.environ.items() if not k.startswith(("JUPYTERHUB_", "JUPYTER_"))}
    env.pop("ORACULO_MODELS_URL", None)
    env.update(
        {
            "HOME": str(root),
            "USER": "memoryowner",
            "JUPYTER_CONFIG_DIR": str(tmp / "config"),
            "JUPYTER_RUNTIME_DIR": str(tmp / "runtime"),
            "JUPYTER_DATA_DIR": str(tmp / "data"),
            **extra_env,
        }
    )
    log = tmp / "server.log"
    cmd = [
        str(Path(sys.executable).parent / "jupyter-server"),
        "--ServerApp.ip=127.0.0.1",
        f"--ServerApp.port={port}",
        "--ServerApp.port_retries=0",
        "--ServerApp.open_browser=False",
        "--ServerApp.allow_root=True",
        f"--ServerApp.root_dir={root}",
        f"--IdentityProvider.token={token}",
    ]
    with log.open("wb") as f:
        proc = subprocess.Popen(cmd, env=env, stdout=f, stderr=subprocess.STDOUT, cwd=root)
    srv = Server(proc, port, token, log)

    async def ready() -> bool:
        assert proc.poll() is None, log.read_text()[-3000:]
        async with httpx.AsyncClient() as c:
            r = await c.get(f"{srv.url}/api/v1/memory/index", headers=srv.auth)
        return r.status_code == 200

    try:
        await wait_for(ready, 60, "the jupyter server")
    except BaseException:
        srv.stop()
        raise
    return srv


@pytest.fixture(scope="module")
async def server(
    models_hub: HubProcess, tmp_path_factory: pytest.TempPathFactory
) -> AsyncIterator[Server]:
    client = HubClient(models_hub)
    user = await new_user(client)  # only its token, to reach the model service
    tmp = tmp_path_factory.mktemp("memory-panel")
    (tmp / "home").mkdir()
    (tmp / "home" / "notes.md").write_text("# Notes\n\nThe quarterly review is on Thursday.\n")
    env = {
        "ORACULO_MODELS_URL": f"{models_hub.url}/services/models/",
        "ORACULO_MODELS_TOKEN": user.token,
    }
    srv = await start_server(tmp, env)
    try:
        yield srv
    finally:
        srv.stop()
        await user.client.aclose()
        await client.aclose()


def test_render_index_status_escapes() -> None:
    body = render_index_status(
        {
            "state": "idle",
            "files": 2,
            "chunks": 3,
            "last_run": {"finished": "2026-01-01T00:00:00+00:00", "indexed": 1},
            "errors": [{"path": "<b>x</b>", "error": "<script>"}],
        }
    )
    assert "<script>" not in body and "<b>x" not in body
    assert 'data-state="idle"' in body and "2 files · 3 passages" in body


@pytest.mark.browser
async def test_memory_panel_in_browser(server: Server, artifacts: Path) -> None:
    from playwright.async_api import async_playwright, expect

    requests: list[str] = []
    async with httpx.AsyncClient(base_url=server.url, timeout=60) as api:
        r = await api.post(
            "/api/v1/memory", json={"key": "manager", "value": "Maria"}, headers=server.auth
        )
        assert r.status_code in (200, 201), r.text
        async with async_playwright() as pw:
            browser = await pw.chromium.launch(
                executable_path="/usr/bin/chromium", args=CHROMIUM_ARGS
            )
            try:
                page = await browser.new_page(viewport={"width": 1200, "height": 900})
                page.on("request", lambda r: requests.append(r.url))
                page.on("websocket", lambda ws: requests.append(ws.url))
                await page.goto(f"{server.url}/login?next={MEMORY_PAGE}")
                await page.fill("input[name=password]", server.token)
                await page.click("#login_submit")
                await expect(
                    page.locator("[data-testid=oraculo-memory][data-state=ok]")
                ).to_be_visible(timeout=60_000)
                await expect(page.get_by_test_id("memory-count")).to_have_text("1 memory")
                table = page.locator(".oraculo-memory-table")
                await expect(table).to_contain_text("Maria")

                # Add one.
                await page.locator(".oraculo-memory-key input").fill("chart style")
                await page.locator(".oraculo-memory-value textarea").fill(
                    "Prefers Altair charts with a white background."
                )
                await page.locator(".oraculo-memory-scope input").fill("prefs")
                await page.locator(".oraculo-memory-save button").click()
                message = page.get_by_test_id("memory-message")
                await expect(message).to_contain_text("Saved", timeout=30_000)
                await expect(table).to_contain_text("Altair")
                await expect(page.get_by_test_id("memory-count")).to_have_text("2 memories")
                r = await api.get(
                    "/api/v1/memory", params={"key": "chart style"}, headers=server.auth
                )
                assert r.json()["scope"] == "prefs"

                # A bad one says why, in the page.
                await page.locator(".oraculo-memory-new button").click()
                await page.locator(".oraculo-memory-key input").fill("empty value")
                await page.locator(".oraculo-memory-save button").click()
                await expect(
                    page.locator("[data-testid=memory-message][data-state=error]")
                ).to_contain_text("value")

                # Search, select the hit, edit it.
                await page.locator(".oraculo-memory-search input").fill("which plotting library?")
                await page.locator(".oraculo-memory-search-button button").click()
                await expect(message).to_contain_text("Best matches", timeout=30_000)
                await table.get_by_text("Altair", exact=False).first.click()
                await expect(page.locator(".oraculo-memory-key input")).to_have_value("chart style")
                await page.locator(".oraculo-memory-value textarea").fill(
                    "Prefers Vega-Lite charts."
                )
                await page.locator(".oraculo-memory-save button").click()
                await expect(table).to_contain_text("Vega-Lite", timeout=30_000)
                r = await api.get(
                    "/api/v1/memory", params={"key": "chart style"}, headers=server.auth
                )
                assert r.json()["value"] == "Prefers Vega-Lite charts."

                # Delete asks first; the second click deletes it and empties the form.
                delete = page.locator(".oraculo-memory-delete button")
                await delete.click()
                await expect(delete).to_have_text("Really delete?")
                await expect(message).to_contain_text("Delete “chart style”?")
                await page.screenshot(path=str(artifacts / "panels-memory-delete-confirm.png"))
                r = await api.get(
                    "/api/v1/memory", params={"key": "chart style"}, headers=server.auth
                )
                assert r.status_code == 200, "deleted without confirmation"
                await delete.click()
                await expect(message).to_contain_text("Deleted", timeout=30_000)
                await expect(delete).to_have_text("Delete")
                r = await api.get(
                    "/api/v1/memory", params={"key": "chart style"}, headers=server.auth
                )
                assert r.status_code == 404
                await expect(page.locator(".oraculo-memory-key input")).to_have_value("")
                await expect(page.locator(".oraculo-memory-value textarea")).to_have_value("")
                await expect(table).not_to_contain_text("Vega-Lite")
                # the search shown is re-run without replacing what the delete said
                await expect(message).to_contain_text("Deleted")
                await expect(message).not_to_contain_text("Best matches")

                # Reindex: the index card reports the workspace's files (notes.md, and the
                # agent notebook the agents feature seeds in a new home).
                await page.locator(".oraculo-memory-reindex button").click()
                status = page.locator("[data-testid=memory-index-status][data-state=idle]")
                await expect(status).to_contain_text(re.compile(r"[1-9]\d* files"), timeout=60_000)
                await page.screenshot(path=str(artifacts / "panels-memory.png"), full_page=True)
            finally:
                await browser.close()

    for url in requests:
        parsed = urlparse(url.removeprefix("blob:"))
        assert parsed.hostname == "127.0.0.1", url


async def test_memory_page_needs_credentials(server: Server) -> None:
    async with httpx.AsyncClient(base_url=server.url) as c:
        r = await c.get(MEMORY_PAGE)
    assert r.status_code == 302
