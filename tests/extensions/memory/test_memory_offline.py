"""Without a model service (a plain ``jupyter server``), memory fails clearly, never silently.

Writes and searches need vectors, so they answer 503 in the error envelope with
``Retry-After``; reading (list, get) and deleting still work; the index status says why it is
not indexing. Nothing is written to the home folder.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest

from tests.extensions.memory.test_memory import assert_envelope
from tests.extensions.panels.test_memory_panel import Server, start_server
from tests.harness import wait_for


@pytest.fixture(scope="module")
async def offline(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[Server]:
    tmp = tmp_path_factory.mktemp("memory-offline")
    (tmp / "home").mkdir()
    (tmp / "home" / "notes.md").write_text("# Notes\n")
    srv = await start_server(tmp, {})
    try:
        yield srv
    finally:
        srv.stop()


async def test_no_model_service_is_a_clear_503(offline: Server) -> None:
    async with httpx.AsyncClient(base_url=offline.url, headers=offline.auth) as c:
        r = await c.post("/api/v1/memory", json={"key": "k", "value": "v"})
        body = assert_envelope(r, 503, "unavailable")
        assert "model service" in body["message"] and r.headers["Retry-After"].isdigit()
        # Invalid input is still a 400, not a 503.
        assert_envelope(await c.post("/api/v1/memory", json={"key": 1}), 400, "invalid_request")
        r = await c.get("/api/v1/memory", params={"q": "anything"})
        assert_envelope(r, 503, "unavailable")
        r = await c.get("/api/v1/memory/index", params={"q": "anything"})
        assert_envelope(r, 503, "unavailable")

        r = await c.get("/api/v1/memory")
        assert r.status_code == 200 and r.json()["total"] == 0
        assert_envelope(await c.get("/api/v1/memory", params={"key": "k"}), 404, "not_found")
        assert_envelope(await c.delete("/api/v1/memory", params={"key": "k"}), 404, "not_found")

        r = await c.post("/api/v1/memory/index")
        assert r.status_code == 202

        async def reported() -> dict[str, Any] | None:
            status = (await c.get("/api/v1/memory/index")).json()
            return status if status["state"] == "error" else None

        status = await wait_for(reported, 30, "the indexer to report the missing service")
        assert status["embeddings"] is False
        assert "model service" in status["errors"][0]["error"]
    assert not (offline.log.parent / "home" / ".oraculo" / "memory").exists()
