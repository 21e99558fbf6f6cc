"""Fixtures shared by the whole suite: a real hub and signed-in users."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import pytest

from tests.harness import HubClient, HubProcess, User, new_user, wait_for

ARTIFACTS = Path(__file__).resolve().parents[1] / "test-artifacts"


@pytest.fixture(scope="session")
def artifacts() -> Path:
    ARTIFACTS.mkdir(exist_ok=True)
    return ARTIFACTS


@pytest.fixture(scope="session")
async def hub(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[HubProcess]:
    """One hub for the session: `process` spawner, with the model service loaded."""
    proc = await HubProcess(tmp_path_factory.mktemp("hub"), models=True).start()

    async def models_loaded() -> bool:
        async with httpx.AsyncClient(timeout=5) as c:
            r = await c.get(f"{proc.url}/services/models/health")
            return r.status_code == 200 and r.json().get("status") == "ok"

    try:
        await wait_for(models_loaded, 180, "the hub's model service to load", 0.25)
        yield proc
    finally:
        proc.stop()


@pytest.fixture(scope="session")
def models_hub(hub: HubProcess) -> HubProcess:
    """The session hub, named for tests that need its model service."""
    return hub


@pytest.fixture(scope="session")
async def hub_client(hub: HubProcess) -> AsyncIterator[HubClient]:
    client = HubClient(hub)
    try:
        yield client
    finally:
        await client.aclose()


@pytest.fixture(scope="session")
async def alice(hub_client: HubClient) -> AsyncIterator[User]:
    """A user whose server is running for the whole session."""
    user = await new_user(hub_client, "alice")
    await user.spawn()
    yield user
    await user.client.aclose()


@pytest.fixture(scope="session")
async def mallory(hub_client: HubClient) -> AsyncIterator[User]:
    """Another user, with a server of her own, who must never reach alice's."""
    user = await new_user(hub_client, "mallory")
    await user.spawn()
    yield user
    await user.client.aclose()
