"""The docs site and the API explorers, in a real Chromium against a real hub, offline.

- The docs site builds with ``mkdocs build --strict`` (warnings are errors) from ``docs/``, with
  the configuration reference (from the traitlets help texts) and the API reference (from the
  OpenAPI documents) generated at build time.
- A hub serving that site (``ORACULO_DOCS_DIR``) shows it at ``/services/docs/`` to anyone; the
  user's explorer (``/user/<name>/oraculo/explorer``, signed in) and the model service's
  (``/services/models/explorer``) render their documents with the bundled Swagger UI.
- Every request the browser makes is intercepted: anything not for 127.0.0.1 is aborted and
  recorded, and the test fails if there is any. A screenshot per step goes to
  ``test-artifacts/docs-*.png``.
"""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import AsyncIterator
from pathlib import Path
from urllib.parse import urlparse

import httpx
import pytest
from playwright.async_api import Page, Request, Route, async_playwright

from tests.harness import CHROMIUM_ARGS, PASSWORD, REPO, HubClient, HubProcess, new_user, wait_for

pytestmark = pytest.mark.browser


@pytest.fixture(scope="module")
def site(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("docs") / "site"
    r = subprocess.run(
        [str(Path(sys.executable).parent / "mkdocs"), "build", "--strict", "-d", str(out)],
        cwd=REPO,
        env={**os.environ, "NO_MKDOCS_2_WARNING": "1"},
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert r.returncode == 0, r.stderr[-4000:]
    return out


def test_docs_site_builds_strict_with_generated_references(site: Path) -> None:
    for page in ("getting-started", "analysts", "educators", "teams", "security", "benchmarks"):
        assert (site / page / "index.html").is_file(), page
    for page in ("features", "model-backends", "agent-tools", "panels"):
        assert (site / "plugins" / page / "index.html").is_file(), page
    config = (site / "configuration" / "index.html").read_text()
    # from the traitlets help texts of the hub, the extension, its features and the model service
    for setting in (
        "c.OraculoHub.docs_dir",
        "c.OraculoExtension.feature_plugins",
        "c.ExecuteService.",
        "c.ModelServiceApp.",
    ):
        assert setting in config, setting
    assert "The built docs site" in config  # a help text, verbatim
    api = (site / "api" / "index.html").read_text()
    assert "POST /api/v1/execute" in api and "POST /v1/chat/completions" in api
    assert (site / "api" / "workspace-openapi.json").is_file()
    # the README's walk-through, reused
    assert "Bind the Chat panel to the notebook" in (site / "analysts" / "index.html").read_text()
    # nothing in the pages loads from elsewhere (links out are fine; sources are not)
    for html in site.rglob("*.html"):
        text = html.read_text()
        assert "fonts.googleapis" not in text and "fonts.gstatic" not in text, html


@pytest.fixture(scope="module")
async def docs_hub(
    site: Path, tmp_path_factory: pytest.TempPathFactory
) -> AsyncIterator[HubProcess]:
    hub = HubProcess(
        tmp_path_factory.mktemp("docs-hub"), models=True, env={"ORACULO_DOCS_DIR": str(site)}
    )
    await hub.start()

    async def ready() -> bool:
        async with httpx.AsyncClient(timeout=5) as c:
            docs = await c.get(f"{hub.url}/services/docs/")
            models = await c.get(f"{hub.url}/services/models/health")
            return docs.status_code == 200 and models.status_code == 200

    try:
        await wait_for(ready, 240, "the docs and model services", 0.25)
        yield hub
    finally:
        hub.stop()


async def test_explorers_and_docs_open_with_no_external_request(
    docs_hub: HubProcess, artifacts: Path
) -> None:
    client = HubClient(docs_hub)
    user = await new_user(client, "dora")
    await user.spawn()
    outside: list[str] = []
    failed: list[str] = []

    async def guard(route: Route) -> None:
        url = route.request.url
        host = urlparse(url.removeprefix("blob:")).hostname
        if url.startswith("data:") or host == "127.0.0.1":
            await route.continue_()
        else:
            outside.append(url)
            await route.abort()

    def on_failed(request: Request) -> None:
        if request.failure != "net::ERR_ABORTED":
            failed.append(f"{request.url} {request.failure}")

    async with async_playwright() as pw:
        browser = await pw.chromium.launch(executable_path="/usr/bin/chromium", args=CHROMIUM_ARGS)
        try:
            context = await browser.new_context(viewport={"width": 1300, "height": 900})
            await context.route("**/*", guard)
            page = await context.new_page()
            page.on("requestfailed", on_failed)

            async def shot(name: str) -> None:
                await page.screenshot(path=str(artifacts / f"docs-{name}.png"))

            # 1. the docs site, without signing in
            await page.goto(f"{docs_hub.url}/services/docs/")
            await page.locator("article h1", has_text="Oráculo").wait_for()
            await shot("1-home")
            # 2. the configuration reference, generated from the help texts
            await page.goto(f"{docs_hub.url}/services/docs/configuration/")
            await page.get_by_text("c.OraculoHub.docs_dir").wait_for()
            await shot("2-configuration-reference")
            # 3. search, in the browser (its index and worker are the site's own)
            await page.goto(f"{docs_hub.url}/services/docs/")
            await page.keyboard.press("/")
            await page.keyboard.type("sandbox limits")
            await page.locator(".md-search-result__item").first.wait_for()
            await shot("3-search")
            # 4. the plugins guide
            await page.goto(f"{docs_hub.url}/services/docs/plugins/")
            await page.get_by_text("oraculo.agent_tools").first.wait_for()
            await shot("4-plugins-guide")

            # 5. the model service's explorer (public)
            await page.goto(f"{docs_hub.url}/services/models/explorer")
            await page.locator('.opblock-summary-path[data-path="/v1/chat/completions"]').wait_for()
            await shot("5-models-explorer")

            # 6. sign in, then the workspace explorer of one's own server
            await page.goto(f"{docs_hub.url}/hub/login?next=/user/dora/oraculo/explorer")
            await page.fill("#username_input", "dora")
            await page.fill("#password_input", PASSWORD)
            await page.click("#login_submit")
            execute = page.locator('.opblock-summary-path[data-path="/api/v1/execute"]').first
            try:
                await execute.wait_for(timeout=60_000)
            except Exception:
                await shot("failed")
                raise
            await shot("6-workspace-explorer")
            # 7. one operation opened: its request schema, from ExecuteRequest
            await execute.click()
            await page.get_by_text("ExecuteRequest").first.wait_for()
            await shot("7-execute-operation")
            # 8. try it out, with the signed-in session (and its XSRF cookie)
            await _try_status(page)
            await shot("8-try-status")
        finally:
            await browser.close()
            await client.aclose()
    assert outside == [], outside
    assert failed == [], failed


async def _try_status(page: Page) -> None:
    block = page.locator(
        ".opblock", has=page.locator('.opblock-summary-path[data-path="/api/v1/status"]')
    )
    await block.locator(".opblock-summary").click()
    await block.get_by_role("button", name="Try it out").click()
    await block.get_by_role("button", name="Execute").click()
    status = block.locator(".live-responses-table .response-col_status", has_text="200").first
    await status.wait_for()
    await status.scroll_into_view_if_needed()
    await block.get_by_text('"user": "dora"').first.wait_for()
