"""Fixtures shared by the whole suite: a real hub and signed-in users."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from tests.harness import HubClient, HubProcess, User, new_user

ARTIFACTS = Path(__file__).resolve().parents[1] / "test-artifacts"


@pytest.fixture(scope="session")
def artifacts() -> Path:
    ARTIFACTS.mkdir(exist_ok=True)
    return ARTIFACTS


@pytest.fixture(scope="session")
async def hub(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[HubProcess]:
    """One hub for the session, in `process` spawner mode, without the model service."""
    proc = await HubProcess(tmp_path_factory.mktemp("hub")).start()
    try:
        yield proc
    finally:
        proc.stop()


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
