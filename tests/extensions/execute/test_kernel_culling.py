"""Idle kernels are culled (OraculoHub.kernel_cull_idle_timeout), and the execute API, which
shares one kernel with chat and agents, starts a fresh one on its next run.

The server gets the arguments the hub gives every user server (``kernel_culling_args``), with
the timeouts shortened: a kernel idle for 2 s with no client connected goes; a busy one stays.
"""

from __future__ import annotations

import json
from pathlib import Path

import httpx
import pytest
from traitlets.config import Config

from oraculo.hub.config import OraculoHub
from tests.extensions.panels.test_memory_panel import start_server
from tests.harness import wait_for


def culling_config(timeout: int, interval: int) -> dict[str, dict[str, object]]:
    """The hub's culling arguments, as a jupyter_server config file."""
    c = Config()
    c.OraculoHub.kernel_cull_idle_timeout = timeout
    c.OraculoHub.kernel_cull_interval = interval
    out: dict[str, dict[str, object]] = {}
    for arg in OraculoHub(config=c).kernel_culling_args():
        name, value = arg.removeprefix("--").split("=", 1)
        cls, trait = name.split(".")
        out.setdefault(cls, {})[trait] = json.loads(value.lower())
    return out


@pytest.mark.timeout(180)
async def test_an_idle_kernel_is_culled_and_the_next_run_gets_a_fresh_one(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("ORACULO_KERNEL_CULL_IDLE_TIMEOUT", raising=False)
    (tmp_path / "config").mkdir()
    config = culling_config(timeout=2, interval=1)
    assert config["MappingKernelManager"]["cull_connected"] is False
    (tmp_path / "config" / "jupyter_server_config.json").write_text(json.dumps(config))
    srv = await start_server(tmp_path, {})
    try:
        async with httpx.AsyncClient(base_url=srv.url, headers=srv.auth, timeout=120) as c:
            r = await c.post("/api/v1/execute", json={"code": "x = 41"})
            assert r.status_code == 200 and r.json()["error"] is None, r.text
            # busy for longer than the timeout: kept, and its state with it
            r = await c.post("/api/v1/execute", json={"code": "import time; time.sleep(4); x += 1"})
            assert r.status_code == 200 and r.json()["error"] is None, r.text
            r = await c.post("/api/v1/execute", json={"code": "print(x)"})
            assert r.json()["stdout"] == "42\n", r.text
            first = r.json()["session"]  # the kernel's id
            assert [k["id"] for k in (await c.get("/api/kernels")).json()] == [first]

            async def culled() -> bool:
                return (await c.get("/api/kernels")).json() == []

            await wait_for(culled, 30, "the idle kernel to be culled", 0.5)
            assert "Culling kernel" in srv.log.read_text()
            r = await c.post("/api/v1/execute", json={"code": "print('x' in dir())"})
            assert r.status_code == 200 and r.json()["stdout"] == "False\n", r.text
            assert r.json()["session"] != first
            kernels = (await c.get("/api/kernels")).json()
            assert [k["id"] for k in kernels] == [r.json()["session"]]
    finally:
        srv.stop()
