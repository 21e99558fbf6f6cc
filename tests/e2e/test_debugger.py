"""JupyterLab's debugger on the sandbox kernel, in Chromium against the real hub.

The kernel loads the debugger (debugpy, pydevd) at its first use (``oraculo.kernels.launch``):
opening a notebook, which asks the kernel for ``debugInfo``, loads nothing; switching the
debugger on in the notebook's toolbar does, and then a breakpoint stops the cell, the Variables
and Callstack panels show the stopped frame, and Continue finishes the run. A screenshot per step
goes to ``test-artifacts/debugger-*.png``.
"""

from __future__ import annotations

import re
import time
from pathlib import Path

import psutil
import pytest
from nbformat import v4
from playwright.async_api import Page, async_playwright, expect

from tests.harness import CHROMIUM_ARGS, PASSWORD, HubClient, HubProcess, new_user, wait_for

pytestmark = pytest.mark.browser

CODE = "def f(a, b):\n    c = a + b\n    return c\n\nprint('sum', f(2, 3))"
CHECK = "import sys\nprint('debugger loaded:', 'debugpy' in sys.modules)"


async def test_the_debugger_stops_at_a_breakpoint_on_the_sandbox_kernel(
    hub: HubProcess, artifacts: Path
) -> None:
    started = time.time()
    client = HubClient(hub)
    user = await new_user(client, "dora")
    await user.spawn()
    notebook = v4.new_notebook(
        cells=[v4.new_code_cell(CHECK), v4.new_code_cell(CODE)],
        metadata={"kernelspec": {"name": "oraculo", "display_name": "Oráculo (Python 3)"}},
    )
    r = await user.api(
        "PUT",
        f"/user/{user.name}/api/contents/debug.ipynb",
        json={"type": "notebook", "format": "json", "content": notebook},
    )
    assert r.status_code in (200, 201), r.text

    step = 0

    async def shot(page: Page, name: str) -> None:
        nonlocal step
        step += 1
        await page.screenshot(path=str(artifacts / f"debugger-{step}-{name}.png"))

    async with async_playwright() as pw:
        browser = await pw.chromium.launch(executable_path="/usr/bin/chromium", args=CHROMIUM_ARGS)
        try:
            context = await browser.new_context(viewport={"width": 1400, "height": 900})
            lab = await context.new_page()
            await lab.goto(f"{hub.url}/hub/login?next=/user/{user.name}/lab/tree/debug.ipynb")
            await lab.fill("#username_input", user.name)
            await lab.fill("#password_input", PASSWORD)
            await lab.click("#login_submit")
            await lab.wait_for_url(re.compile(rf"/user/{user.name}/lab"), timeout=120_000)
            panel = lab.locator(".jp-NotebookPanel:visible")
            cells = panel.locator(".jp-Notebook .jp-Cell")
            await expect(cells).to_have_count(2, timeout=90_000)
            indicator = panel.locator(".jp-Notebook-ExecutionIndicator")
            await expect(indicator).to_have_attribute("data-status", "idle", timeout=120_000)
            bug = panel.locator(".jp-DebuggerBugButton")
            await expect(bug).to_be_enabled(timeout=60_000)  # the kernel supports debugging

            # 1. The notebook is open, and JupyterLab has asked the kernel about its debugger:
            # nothing of the debugger has loaded.
            await cells.nth(0).locator(".jp-InputPrompt").click()
            await lab.keyboard.press("Shift+Enter")
            output = cells.nth(0).locator(".jp-OutputArea")
            await expect(output).to_contain_text("debugger loaded: False", timeout=60_000)
            await shot(lab, "notebook-open")

            # 2. The debugger on: its sidebar opens.
            await bug.click()
            await expect(bug).to_have_attribute("aria-pressed", "true", timeout=60_000)
            variables = lab.locator(".jp-DebuggerVariables")
            await expect(variables).to_be_visible(timeout=60_000)
            await shot(lab, "debugger-on")

            # 3. A breakpoint on line 2 (c = a + b), by the gutter, as a person sets it.
            editor = cells.nth(1)
            # (CodeMirror's first gutter element is a hidden spacer, not a line)
            lines = editor.locator(
                ".cm-breakpoint-gutter .cm-gutterElement:not([style*='visibility: hidden'])"
            )
            await lines.nth(1).click()
            breakpoints = lab.locator(".jp-DebuggerBreakpoint")
            await expect(breakpoints).to_have_count(1, timeout=30_000)
            await expect(breakpoints.first).to_contain_text("2")
            await shot(lab, "breakpoint")

            # 4. Run the cell: it stops at line 2; the frame is f's, with a = 2 and b = 3.
            await editor.locator(".jp-InputPrompt").click()
            await lab.keyboard.press("Shift+Enter")
            frame = lab.locator(".jp-DebuggerCallstackFrame-name").first
            await expect(frame).to_have_text("f", timeout=60_000)
            body = variables.locator(".jp-DebuggerVariables-body:not(.lm-mod-hidden)")
            # each variable's name, then its value
            await expect(body).to_contain_text(re.compile(r"\ba\s*:?\s*2\b"), timeout=30_000)
            await expect(body).to_contain_text(re.compile(r"\bb\s*:?\s*3\b"))
            await shot(lab, "stopped")

            # 5. Continue: the cell finishes with f's result.
            await lab.get_by_title(re.compile(r"^Continue")).first.click()
            await expect(editor.locator(".jp-OutputArea")).to_contain_text("sum 5", timeout=60_000)
            await shot(lab, "continued")
            await browser.close()

            # Shutting the kernel down ends debugpy's adapter with it (it daemonizes, but stays in
            # the kernel's cgroup). Left running in this session's hub, one spun at 60-200 % CPU
            # through the rest of the suite, and timing tests failed.
            r = await user.api("GET", f"/user/{user.name}/api/kernels")
            for kernel in r.json():
                await user.api("DELETE", f"/user/{user.name}/api/kernels/{kernel['id']}")

            async def adapter_gone() -> bool:
                return not any(
                    "debugpy/adapter" in " ".join(p.info["cmdline"] or [])
                    and p.info["create_time"] >= started
                    for p in psutil.process_iter(["cmdline", "create_time"])
                )

            await wait_for(adapter_gone, 30, "the kernel's debug adapter to end with it")
        finally:
            await browser.close()
            await user.client.aclose()
            await client.aclose()
