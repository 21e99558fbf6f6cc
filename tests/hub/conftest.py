"""Fixtures of the hub tests."""

from __future__ import annotations

import pytest

from oraculo.hub import gpus
from oraculo.hub.spawners import OraculoDockerSpawner
from tests.hub.fakes import FakeDockerAPI


@pytest.fixture
def fake_docker(monkeypatch: pytest.MonkeyPatch) -> FakeDockerAPI:
    client = FakeDockerAPI()
    monkeypatch.setattr(OraculoDockerSpawner, "_client", client)
    monkeypatch.setattr(gpus, "_allocator", None)
    return client
